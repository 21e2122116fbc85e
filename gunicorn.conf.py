"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``-b``/``-w`` on the command line win)."""

import multiprocessing
import os

bind = "127.0.0.1:3000"

# gthread: an image generation waits 10-120 s on the upstream. A sync worker would hold
# a whole process per request and be killed by the heartbeat timeout; a gthread worker
# waits in a thread while its main loop keeps the heartbeat going.
worker_class = "gthread"
workers = max(2, multiprocessing.cpu_count())
threads = 32

# Heartbeat only (gthread notifies from its main loop, not from request threads).
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
