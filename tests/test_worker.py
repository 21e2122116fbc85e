"""The gateway's gthread worker spreads connections over the workers (real gunicorn)."""

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
    gunicorn = Gunicorn(
        tmp_path / "config.yaml",
        workers=workers,
        threads=threads,
        app="tests.pid_app:app",
        args=("-k", "aisix_flask.workers.threads.ThreadWorker"),  # the worker these tests are about
    )
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


# -- the two rules, one at a time, on a worker that is not running --


@pytest.fixture
def worker(monkeypatch):
    """A ThreadWorker with 2 threads and a real listening socket, its pool and poller set up as
    init_process would, but no loop running; nothing is handed to a thread."""
    import selectors
    import socket
    from concurrent.futures import Future

    from gunicorn.config import Config

    from aisix_flask.workers import threads as module

    cfg = Config()
    cfg.set("threads", 2)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    w = module.ThreadWorker(1, 0, [listener], None, 30, cfg, None)
    w.poller = selectors.DefaultSelector()
    submitted: list = []
    w.tpool = type("Pool", (), {"submit": lambda self, fn, conn: submitted.append(conn) or Future()})()
    w.submitted = submitted
    slept: list[float] = []
    monkeypatch.setattr(module.time, "sleep", slept.append)
    w.slept = slept
    yield w
    for conn in submitted:
        conn.sock.close()
    w.poller.close()
    listener.close()
    w.tmp.close()


def test_an_idle_worker_accepts_at_once_and_a_busier_one_waits_longer(worker):
    import socket

    listener = worker.sockets[0]
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    try:
        worker.accept(listener)  # holds no connection yet: no wait
        worker.nr_conns = 4  # pretend it holds four
        worker.accept(listener)
        worker.nr_conns = 50
        worker.accept(listener)
        assert worker.slept == [pytest.approx(0.0008), pytest.approx(0.002)]  # the first never slept
        assert len(worker.submitted) == 3 and worker.busy == 3
    finally:
        for client in clients:
            client.close()


def test_a_worker_stops_accepting_while_every_thread_is_busy(worker):
    worker.set_accept_enabled(True)
    assert worker._accepting
    worker.enqueue_req(_conn())
    assert worker._accepting  # one of two threads free
    worker.enqueue_req(_conn())
    assert not worker._accepting  # both busy: the listener is off the poller
    worker.set_accept_enabled(True)  # what the main loop asks every turn
    assert not worker._accepting
    from concurrent.futures import Future

    done = Future()
    done.set_result(False)  # the request ended and the connection is closed
    worker.nr_conns = 2
    worker.finish_request(_conn(), done)
    assert worker.busy == 1
    worker.set_accept_enabled(True)
    assert worker._accepting


def _conn():
    import socket

    sock = socket.socket()
    return type("Conn", (), {"sock": sock, "close": lambda self, graceful=False: sock.close()})()
