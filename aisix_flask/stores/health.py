"""Whether each store the gateway depends on answers, as this process last saw it.

A store that stops answering is seen by every request that uses it. Its failures are told once
per ``interval_s`` (an event line with how many there were), not once per request, and when it
answers again; the gauge ``aisix_store_up{store}`` and ``/readyz`` say where it stands.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import metrics
from ..eventlog import emit
from ..redact import without_credentials


class StoreHealth:
    """One store's health in this process: ``failed`` on an error, ``answered`` on a success."""

    interval_s = 10.0

    def __init__(self, store: str, url: str) -> None:
        self.store = store
        self.backend = url.partition(":")[0].split("+")[0] or "unknown"
        self._url = without_credentials(url)
        self.up = True
        self._failures = 0  # since the last line
        self._next_line_at = 0.0
        self._lock = threading.Lock()
        metrics.STORE_UP.labels(store).set(1)

    def failed(self, doing: str, error: BaseException) -> None:
        """The store did not answer while ``doing`` something (the request went on without it, or
        was refused: the caller says which in ``doing``)."""
        with self._lock:
            self._failures += 1
            was_up, self.up = self.up, False
            now = time.monotonic()
            if not was_up and now < self._next_line_at:
                return
            failures, self._failures, self._next_line_at = self._failures, 0, now + self.interval_s
        metrics.STORE_UP.labels(self.store).set(0)
        emit(
            "store_unavailable",
            logging.ERROR,
            store=self.store,
            backend=self.backend,
            url=self._url,
            failures=failures,
            interval_s=self.interval_s,
            doing=doing,
            error=without_credentials(str(error))[:300],
        )

    def answered(self) -> None:
        """The store answered: if it had not, say so once."""
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            self.up, failures, self._failures = True, self._failures, 0
        metrics.STORE_UP.labels(self.store).set(1)
        emit("store_available", store=self.store, backend=self.backend, url=self._url, failures=failures)
