"""Waiting for the first of a few sockets to become readable, or a deadline: what a relayed stream
does between two upstream reads (the upstream's next bytes, or the caller hanging up).

Under threads this is ``select.poll``. Under gevent, ``select.poll`` is gevent's, which makes new
watchers, an Event and a timer at every call (15 µs a wait, ten waits a stream); a ``Readiness``
there keeps one watcher per socket for the stream's life and starts them only while it waits
(5 µs). bench/RESULTS.md has the figures.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from . import on_greenlets


class Readiness:
    """Waits on ``sockets`` (by file descriptor) until one is readable or time runs out."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._poll = select.poll()  # not select(): descriptors above 1,024 are common under load
        for sock in sockets:
            self._poll.register(sock, select.POLLIN | select.POLLPRI)

    def wait(self, seconds: float) -> set[int]:
        """The descriptors readable now, waiting up to ``seconds`` for one (empty: time ran out)."""
        return {fd for fd, _ in self._poll.poll(max(0.0, seconds) * 1000)}

    def forget(self, sock: socket.socket) -> None:
        """Stop watching ``sock``."""
        self._poll.unregister(sock)

    def close(self) -> None:
        """Nothing more will be waited for."""


class _GreenReadiness(Readiness):
    """gevent's loop watchers, made once: a wait starts them and a timer, and stops them again."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        from gevent.hub import Waiter, get_hub  # (only a gevent worker has gevent loaded)

        self._hub = get_hub()
        self._waiter = Waiter
        read = 1  # libev's EV_READ (gevent's select module has it as a private name)
        self._watchers: dict[int, Any] = {s.fileno(): self._hub.loop.io(s.fileno(), read) for s in sockets}

    def wait(self, seconds: float) -> set[int]:
        waiter = self._waiter(self._hub)
        for fd, watcher in self._watchers.items():
            watcher.start(waiter.switch, fd)
        timer = self._hub.loop.timer(max(0.0, seconds))
        timer.start(waiter.switch, None)
        try:
            # Whichever fires first switches back here; stopping the others (below) also drops a
            # callback of theirs that was due in the same turn of the loop.
            fd = waiter.get()
        finally:
            for watcher in self._watchers.values():
                watcher.stop()
            timer.close()
        return set() if fd is None else {fd}

    def forget(self, sock: socket.socket) -> None:
        watcher = self._watchers.pop(sock.fileno(), None)
        if watcher is not None:
            watcher.close()

    def close(self) -> None:
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()


def readiness(sockets: list[socket.socket]) -> Readiness:
    """A ``Readiness`` for ``sockets``: the worker class's cheapest."""
    return _GreenReadiness(sockets) if on_greenlets() else Readiness(sockets)
