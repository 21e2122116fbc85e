"""gunicorn's gthread worker, accepting connections where there is room for them.

Every worker waits on the same listening socket, and the kernel wakes them all for each new
connection: whichever gets to ``accept`` first keeps it for as long as the client keeps it
alive. Two things go wrong with plain gthread under load:

- A burst of keep-alive connections (a load balancer's pool, a client's) often lands on one
  worker, whose threads then share one GIL and one core while the other workers idle. A worker
  here waits a moment before taking a connection when it already holds more than another
  worker could, so the least busy worker takes it first.
- A worker whose threads are all busy (slow generations) keeps accepting, and the request
  waits in its queue for a whole generation while another worker has a free thread. A worker
  here stops accepting while all its threads are busy; the connection waits in the listen
  backlog for a worker that can start it at once.

Use it with ``worker_class = "aisix_flask.workers.threads.ThreadWorker"``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

from gunicorn.workers import gthread

from . import settle_heap, stopping

# How long a worker holding connections waits before accepting another: long enough for an
# idle worker woken by the same connection to take it, short enough to be noise when no other
# worker is free. It grows with the connections held, up to _MAX_DELAY_S.
_DELAY_PER_CONNECTION_S = 0.0002
_MAX_DELAY_S = 0.002


class ThreadWorker(gthread.ThreadWorker):
    """A gthread worker that leaves connections to less busy workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy = 0  # requests handed to the thread pool and not finished

    def load_wsgi(self) -> None:
        super().load_wsgi()
        settle_heap()

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: a graceful stop; streams must end before the grace period does."""
        stopping(self.cfg.graceful_timeout)
        super().handle_exit(sig, frame)

    def accept(self, listener: Any) -> None:
        if self.nr_conns:
            time.sleep(min(self.nr_conns * _DELAY_PER_CONNECTION_S, _MAX_DELAY_S))
        super().accept(listener)  # EAGAIN (another worker took it) is ignored there

    def enqueue_req(self, conn: Any) -> None:
        self.busy += 1
        super().enqueue_req(conn)
        self._stop_when_full()

    def finish_request(self, conn: Any, fs: Future[Any]) -> None:
        self.busy -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        # The main loop calls this whenever its own condition (connections below
        # worker_connections) differs from the current state; add "a thread is free".
        super().set_accept_enabled(enabled and self.busy < self.cfg.threads)

    def _stop_when_full(self) -> None:
        if self._accepting and self.busy >= self.cfg.threads:
            self.set_accept_enabled(False)
