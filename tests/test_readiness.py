"""A relayed stream's wait for the first of its sockets to be readable (workers/readiness.py): the
same answers from select.poll (threads) and from gevent's watchers made once per stream."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from aisix_flask.workers.readiness import Readiness, _GreenReadiness


@pytest.mark.parametrize("kind", [Readiness, _GreenReadiness])
def test_a_wait_names_the_readable_socket_or_times_out(kind):
    upstream, upstream_peer = socket.socketpair()
    caller, caller_peer = socket.socketpair()
    watch = kind([upstream, caller])
    seen: list[object] = []

    def waits() -> None:
        started = time.monotonic()
        seen.append(watch.wait(0.05))  # nothing sent: the time runs out
        seen.append(time.monotonic() - started)
        upstream_peer.send(b"data: 1\n\n")
        seen.append(watch.wait(5))
        upstream.recv(100)
        caller_peer.close()  # the caller hangs up
        seen.append(watch.wait(5))
        watch.forget(caller)
        seen.append(watch.wait(0.01))  # (a closed caller, no longer watched, wakes nothing)
        watch.close()

    try:
        gevent.spawn(waits).join(10)  # a greenlet: gevent's watchers need the hub
        empty, waited, readable, hung_up, after = seen
        assert empty == set() and 0.04 <= waited < 1
        assert readable == {upstream.fileno()}
        assert hung_up == {caller.fileno()}
        assert after == set()
    finally:
        for sock in (upstream, upstream_peer, caller):
            sock.close()
