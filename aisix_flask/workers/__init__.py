"""gunicorn worker classes for the gateway, and what a stopping worker tells its streams.

``threads.ThreadWorker`` (gthread, one thread per request in flight) and ``greenlets.GeventWorker``
(gevent, one greenlet per request in flight): README, "Deploying with gunicorn".
"""

from __future__ import annotations

import atexit
import functools
import gc
import sys
import time

# Streams end themselves this long before a stopping worker's grace period runs out, so that
# their usage rows are written (the worker is killed at the end of it).
STREAM_MARGIN_S = 5.0
_streams_end_by: float | None = None


def stopping(graceful_timeout: float) -> None:
    """This worker was told to stop (SIGTERM) and has ``graceful_timeout`` seconds left."""
    global _streams_end_by
    if _streams_end_by is None:
        _streams_end_by = time.monotonic() + max(0.0, graceful_timeout - STREAM_MARGIN_S)


def streams_must_end_by() -> float | None:
    """When (time.monotonic) this process's streams must end because it is stopping, else None."""
    return _streams_end_by


@functools.cache
def on_greenlets() -> bool:
    """Whether gevent patched this process's threads (gunicorn's gevent worker does, before the
    app is imported): then every request is a greenlet, and locks and sockets are gevent's."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


# The collector's first generation: 700 allocations by default, a collection every few events of
# a stream. Once the app is loaded, what it built (config, schemas, tables, the libraries) lives as
# long as the worker: frozen, the collector no longer walks it, and a larger first generation
# collects a request's short-lived cycles in far fewer passes. bench/RESULTS.md has the figures.
GC_THRESHOLDS = (20_000, 10, 10)


def settle_heap() -> None:
    """Called by the worker classes once the app is loaded: freeze what the app built, and
    collect less often (``GC_THRESHOLDS``)."""
    gc.collect()
    gc.freeze()
    # At exit the frozen objects are handed back to the collector, which then finalizes them in
    # order (left frozen, logging's handlers were torn down after its lock).
    atexit.register(gc.unfreeze)
    gc.set_threshold(*GC_THRESHOLDS)
