"""gunicorn's gevent worker for the gateway: a greenlet per request in flight, so a host holds
thousands of slow calls (generations, streams) in a few MB each instead of a thread each.

Use it with ``worker_class = "aisix_flask.workers.greenlets.GeventWorker"`` (gunicorn.conf.py does).
gunicorn patches the standard library (sockets, threads, locks, ``select``) before the app is
imported, so requests, the ledger writer, the config watcher and the limiter's locks all become
cooperative; what still blocks the worker for its duration is a SQLite call (a fraction of a
millisecond) and the limiter file's lock while another worker holds it.
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
