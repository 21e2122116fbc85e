"""The rows a process's ledger writer has yet to hand on: queued by the request threads, counted
from the moment they are queued until the writer has put them in the database or the journal, so
that a stop can wait for every one of them."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from .row import UsageRow


class Backlog:
    """A bounded queue of rows and the count of those not yet handed on. The count is kept here
    rather than with the queue's own task accounting, which gevent's patched queue does not have.
    A process makes its own after a fork: the parent's writer is not there to empty it."""

    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[UsageRow | None] = queue.Queue(size)
        self._unwritten = 0
        self._all_written = threading.Condition()

    def put(self, row: UsageRow) -> bool:
        """Queue ``row``, counted until ``written``; False when the queue is full (not counted)."""
        with self._all_written:
            self._unwritten += 1
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.written(1)
            return False
        return True

    def queued(self) -> int:
        """How many rows wait in the queue now."""
        return self._queue.qsize()

    def next_batch(
        self, size: int, linger_s: float, idle_s: float, pause: Callable[[float], object]
    ) -> list[UsageRow]:
        """Up to ``size`` queued rows, waiting at most ``idle_s`` for the first, then pausing
        (``pause(linger_s)``, which a stop cuts short) for more to join it."""
        try:
            first = self._queue.get(timeout=idle_s)
        except queue.Empty:
            return []
        if first is None:
            return []
        if self._queue.qsize() < size - 1:
            # Sleep rather than wait on the queue: a waiting writer would be woken (a thread
            # switch and a turn at the GIL) by every row the request threads put.
            pause(linger_s)
        return [first, *self._take(size - 1)]

    def take_all(self) -> list[UsageRow]:
        """Every row still queued, counted as handed on (to whoever took them)."""
        rows = self._take(None)
        self.written(len(rows))
        return rows

    def _take(self, most: int | None) -> list[UsageRow]:
        """The rows queued now, up to ``most`` (None: all), without waiting."""
        rows: list[UsageRow] = []
        while most is None or len(rows) < most:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                break
            if row is not None:
                rows.append(row)
        return rows

    def wake(self) -> None:
        """Wake a writer waiting for the next row (it finds none)."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def written(self, rows: int) -> None:
        """``rows`` are in the database or the journal (or given up on)."""
        with self._all_written:
            self._unwritten -= rows
            if not self._unwritten:
                self._all_written.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row queued so far is handed on; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._all_written:
            while self._unwritten:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._all_written.wait(remaining)
        return True
