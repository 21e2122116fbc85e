"""gunicorn's gevent worker for the gateway: a greenlet per request in flight, so a host holds
thousands of slow calls (generations, streams) in a few MB each instead of a thread each.

Use it with ``worker_class = "aisix_flask.workers.greenlets.GeventWorker"`` (gunicorn.conf.py does).
gunicorn patches the standard library (sockets, threads, locks, ``select``) before the app is
imported, so requests, the ledger writer, the config watcher and the limiter's locks all become
cooperative. What still holds the whole worker for its duration is CPU work and C calls: a SQLite
call (a fraction of a millisecond; the limiter's file lock while another worker holds it), parsing a
large JSON body or a multipart upload, writing a batch of ledger rows. They are short, but every
greenlet of the worker waits for them, which is what sets the p99 of many concurrent calls
(bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers import ggevent

from . import stopping


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker that tells streams when it is stopping."""

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: a graceful stop; streams must end before the grace period does."""
        stopping(self.cfg.graceful_timeout)
        super().handle_exit(sig, frame)
