"""The gateway's worker classes spread connections over the workers (real gunicorn): gthread
(``threads.ThreadWorker``) and gevent (``greenlets.GeventWorker``, the default)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serving import Gunicorn

THREADS = "aisix_flask.workers.threads.ThreadWorker"
GREENLETS = "aisix_flask.workers.greenlets.GeventWorker"


@pytest.fixture
def server(tmp_path, request):
    workers, threads, *worker_class = request.param
    (tmp_path / "config.yaml").write_text("")
    gunicorn = Gunicorn(
        tmp_path / "config.yaml",
        workers=workers,
        threads=threads,
        app="tests.pid_app:app",
        args=("-k", worker_class[0] if worker_class else THREADS),  # the worker a test is about
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


# -- the gevent worker: a new connection goes to the worker holding the fewest --


@pytest.mark.parametrize("server", [(2, 1, GREENLETS)], indirect=True)
def test_a_burst_of_two_hundred_connections_is_split_evenly_under_gevent(server):
    """Two hundred connections at once, each sending a request that holds it for 0.5 s. gunicorn's
    own gevent server gave one worker 105 to 157 of them when the box was busy (the worker
    already running wins the kernel's race to accept); these workers split them within a few
    (95–100 for the lesser; the bound leaves room for a loaded CI box)."""
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    try:
        for client in clients:
            client.sendall(b"GET /?sleep=0.5 HTTP/1.1\r\nHost: gw\r\n\r\n")
        pids = Counter(_chunked_body(client) for client in clients)
    finally:
        for client in clients:
            client.close()
    assert len(pids) == 2 and min(pids.values()) >= 75, pids


def _chunked_body(client: socket.socket) -> str:
    """The one-chunk body of an answer (pid_app's), read to the last chunk."""
    data = b""
    while b"\r\n0\r\n\r\n" not in data:
        more = client.recv(4096)
        assert more, data
        data += more
    return data.partition(b"\r\n\r\n")[2].split(b"\r\n")[1].decode()


def test_a_worker_leaves_a_connection_to_a_sibling_that_holds_fewer():
    from aisix_flask.workers.greenlets import SLACK, fewer_elsewhere

    assert not fewer_elsewhere(10, None)  # no sibling is taking connections
    assert not fewer_elsewhere(SLACK, 0) and fewer_elsewhere(SLACK + 1, 0)
    assert not fewer_elsewhere(500, 500) and not fewer_elsewhere(500, 496)
    assert fewer_elsewhere(500, 495)


def test_only_live_siblings_count():
    import mmap
    import os

    from aisix_flask.workers import greenlets

    table = mmap.mmap(-1, greenlets._ENTRY.size * greenlets._ENTRIES)
    me = greenlets.Siblings(table, 0)
    now = time.monotonic()
    assert me.fewest(now) is None
    for entry, (pid, held, written) in enumerate(
        [(os.getpid(), 0, now), (1, 30, now), (2, 3, now - greenlets.STALE_S - 1), (0, 0, 0.0)], start=1
    ):
        greenlets._ENTRY.pack_into(table, entry * greenlets._ENTRY.size, pid, held, written)
    # This process's own entry, one written too long ago and an empty one are left out.
    assert me.fewest(now) == 30
    assert me.publish() == 0  # no listener open: its entry is cleared
    assert greenlets._ENTRY.unpack_from(table, 0) == (0, 0, 0.0)


@pytest.fixture
def balanced(monkeypatch):
    """A BalancedServer on a real gevent listener, its worker holding 8 connections (greenlets in
    its pool) and one live sibling whose count the test sets; ``handled`` gets the time of each
    connection the server hands to its handler."""
    import mmap

    import gevent
    from gevent.pool import Pool

    from aisix_flask.workers import greenlets

    table = mmap.mmap(-1, greenlets._ENTRY.size * greenlets._ENTRIES)

    def sibling_holds(count: int) -> None:
        greenlets._ENTRY.pack_into(table, greenlets._ENTRY.size, 1, count, time.monotonic())

    monkeypatch.setattr(greenlets, "_siblings", greenlets.Siblings(table, 0))
    pool = Pool(100)
    held = [pool.spawn(gevent.sleep, 5) for _ in range(8)]
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    handled: list[float] = []
    server = greenlets.BalancedServer(
        listener, handler_class=lambda _listener, sock, _addr: handled.append(time.monotonic()), spawn=pool
    )
    server.start()
    server.sibling_holds, server.handled, server.table = sibling_holds, handled, table
    yield server
    server.close()
    gevent.killall(held)
    listener.close()


def connect_and_wait(server, seconds: float = 2) -> float:
    """Connect to ``server``; how long until its handler got the connection (fails if never)."""
    import gevent

    connected = time.monotonic()
    client = gevent.socket.create_connection(server.socket.getsockname())
    deadline = connected + seconds
    while not server.handled and time.monotonic() < deadline:
        gevent.sleep(0.001)
    client.close()
    assert server.handled, "never accepted"
    return server.handled[0] - connected


def test_a_busier_worker_takes_a_connection_only_after_waiting_for_its_sibling(balanced):
    """The sibling holds none (and never takes it, here): the connection waits WAIT_S, not more."""
    from aisix_flask.workers import greenlets

    balanced.sibling_holds(0)
    waited = connect_and_wait(balanced)
    assert greenlets.WAIT_S <= waited < 0.5, waited
    assert greenlets._ENTRY.unpack_from(balanced.table, 0)[1] >= 8  # it wrote what it holds


def test_a_worker_as_busy_as_its_sibling_takes_a_connection_at_once(balanced, monkeypatch):
    left: list[bool] = []
    monkeypatch.setattr(balanced, "stop_accepting", lambda: left.append(True))
    balanced.sibling_holds(8)
    connect_and_wait(balanced)
    assert left == []  # never stopped accepting to leave it to the sibling


def test_the_wait_is_bounded_while_the_worker_is_busy(balanced):
    """A worker whose loop turns take 8 ms (CPU work between switches) still takes the connection
    after about WAIT_S: the re-checks must not each count as a new connection."""
    import gevent

    def busy() -> None:
        while True:
            spin_until = time.perf_counter() + 0.008
            while time.perf_counter() < spin_until:
                pass
            gevent.sleep(0.0005)  # a timer, as a request waiting on its upstream

    worker = gevent.spawn(busy)
    try:
        balanced.sibling_holds(0)
        assert connect_and_wait(balanced) < 0.5
    finally:
        worker.kill()


def test_a_stopping_worker_is_no_longer_a_sibling_to_leave_connections_to(balanced):
    import os

    from aisix_flask.workers import greenlets

    me = greenlets._siblings
    me.publish()
    assert greenlets._ENTRY.unpack_from(balanced.table, 0)[:2] == (os.getpid(), 8)
    me.leaving = True
    me.publish()
    assert greenlets._ENTRY.unpack_from(balanced.table, 0) == (0, 0, 0.0)
