"""The gateway's gunicorn worker spreads connections over the workers (real gunicorn)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serving import Gunicorn


@pytest.fixture
def server(tmp_path, request):
    workers, threads = request.param
    (tmp_path / "config.yaml").write_text("")
    gunicorn = Gunicorn(tmp_path / "config.yaml", workers=workers, threads=threads, app="tests.pid_app:app")
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while len(seen) < workers and time.monotonic() < deadline:  # every worker has booted
        seen.add(requests.get(f"{gunicorn.url}/", timeout=5).text)
    yield gunicorn
    gunicorn.stop()


@pytest.mark.parametrize("server", [(2, 16)], indirect=True)
def test_a_burst_of_keep_alive_connections_is_shared_by_the_workers(server):
    """Eight clients connecting at once, each keeping its connection: plain gthread often gives all
    eight to one worker, which then serves them on one core while the other worker idles."""
    sessions = [requests.Session() for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        pids = list(pool.map(lambda s: s.get(f"{server.url}/", timeout=10).text, sessions))
    # Every later request on a connection is served by the worker that accepted it.
    assert all(s.get(f"{server.url}/", timeout=10).text == pid for s, pid in zip(sessions, pids, strict=True))
    per_worker = Counter(pids)
    assert len(per_worker) == 2 and min(per_worker.values()) >= 2, per_worker


@pytest.mark.parametrize("server", [(2, 2)], indirect=True)
def test_a_worker_with_every_thread_busy_leaves_new_connections_to_another(server):
    """Four slow requests on 2 workers × 2 threads start at once: none waits behind another."""
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        pids = list(pool.map(lambda _: requests.get(f"{server.url}/?sleep=1.5", timeout=10).text, range(4)))
    assert time.monotonic() - started < 2.8  # one slow request's time, not two
    assert sorted(Counter(pids).values()) == [2, 2]
