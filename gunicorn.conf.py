"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``-b``/``-w`` on the command line win)."""

import multiprocessing
import os
import shutil

bind = "127.0.0.1:3000"

# gevent: an image generation waits 10-120 s on the upstream and a chat stream as long as it
# talks. A greenlet per call holds a thousand of them in a few hundred MB, where a thread per call
# (gthread) would need a thousand threads sharing the GIL; bench/RESULTS.md compares the two.
# The synchronous code is unchanged: gevent patches sockets, threads and locks at worker start.
# For gthread instead: worker_class = "aisix_flask.workers.threads.ThreadWorker" and threads.
worker_class = "aisix_flask.workers.greenlets.GeventWorker"
workers = max(2, multiprocessing.cpu_count())
worker_connections = 2000  # calls in flight per worker (gevent); 2 workers hold 4,000
threads = 32  # for the gthread worker only

# Heartbeat only: the worker's main loop notifies every second while requests wait.
timeout = 30
# A graceful stop (SIGTERM) lets in-flight generations finish: keep this above the
# longest upstream timeout in the config (gateway.upstream.timeout_s, default 300 s).
graceful_timeout = 330
keepalive = 5

if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# gunicorn 24+ opens a control socket at one default path per user; several gateways
# on one host (or the test suite's) would take it from each other.
control_socket_disable = True

# /metrics sums every worker (prometheus_client's multiprocess mode): the workers share a
# directory, which is emptied when the server starts. Set PROMETHEUS_MULTIPROC_DIR to move it.
prometheus_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.abspath(os.path.join("var", "prometheus"))
)


def on_starting(server):
    """Start the metrics from zero."""
    shutil.rmtree(prometheus_dir, ignore_errors=True)
    os.makedirs(prometheus_dir, exist_ok=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
