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

The workers share one listening socket, and the kernel wakes all of them for a new connection:
the one already running wins it. Under load that is the busiest, so with gunicorn's own server one
worker ended up with 80 to 85 % of a thousand kept-alive connections while the other's core idled
(bench/RESULTS.md, round 5). ``BalancedServer`` leaves a new connection to a sibling worker that
holds fewer, for a moment: each worker writes how many connections it holds into a small table in
shared memory, made by gunicorn's master before it forks the workers.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import time
from collections.abc import Callable
from select import POLLIN
from typing import Any

from gevent import monkey
from gevent.server import StreamServer
from gunicorn.workers import ggevent

from . import settle_heap, stopping

# A worker holding more connections than its least busy sibling by more than this leaves a new
# connection to it, looking again every RECHECK_S and taking it itself once it has waited WAIT_S
# (in a burst the sibling may be in the middle of a loop turn of tens of milliseconds).
SLACK = 4
RECHECK_S = 0.002
WAIT_S = 0.1
# Each worker writes its count when it accepts, and every BEAT_S; a count older than STALE_S is a
# sibling that stopped, died or is stuck, and is left out.
BEAT_S = 0.05
STALE_S = 1.0

_ENTRY = struct.Struct("qqd")  # pid, connections held, when written (time.monotonic: host-wide)
_ENTRIES = 128  # worker ages (gunicorn's count of workers started) modulo this share an entry
_table: mmap.mmap | None = None
# A plain poll(2), not gevent's: whether a connection still waits, without a switch to the hub.
_poll = monkey.get_original("select", "poll")


def fewer_elsewhere(mine: int, fewest: int | None) -> bool:
    """Whether a worker holding ``mine`` connections should leave a new one to the sibling that
    holds ``fewest`` (None: no sibling is taking connections)."""
    return fewest is not None and mine > fewest + SLACK


class Siblings:
    """This worker's entry in the shared table, and what it reads of the others'."""

    def __init__(self, table: mmap.mmap, entry: int) -> None:
        self.table, self.offset, self.pid = table, entry * _ENTRY.size, os.getpid()
        self.servers: list[BalancedServer] = []
        self.leaving = False  # told to stop: siblings must not leave connections to it

    def held(self) -> int:
        """Connections this worker holds: every open listener's handlers, idle keep-alives too."""
        return sum(len(server.pool) for server in self.servers if not server.closed)

    def publish(self) -> int:
        """Write this worker's count (its entry is cleared once no listener is open); return it."""
        if self.leaving or not any(not server.closed for server in self.servers):
            _ENTRY.pack_into(self.table, self.offset, 0, 0, 0.0)
            return 0
        held = self.held()
        _ENTRY.pack_into(self.table, self.offset, self.pid, held, time.monotonic())
        return held

    def fewest(self, now: float) -> int | None:
        """The count of the sibling holding the fewest connections, among those that are live."""
        counts = [
            held
            for pid, held, written in _ENTRY.iter_unpack(self.table)
            if pid and pid != self.pid and now - written < STALE_S
        ]
        return min(counts, default=None)


_siblings: Siblings | None = None  # this worker process's, once it runs


class BalancedServer(StreamServer):
    """gevent's server for one listener, built by gunicorn's worker (as its ``server_class``), that
    gives a new connection to the worker's handler unless a sibling worker holds fewer: then it
    stops accepting for RECHECK_S, so that the sibling (woken for the same connection) takes it.
    It takes the connection itself once it has waited WAIT_S."""

    _beat: Any = None  # the timer that writes this worker's count (set while accepting)
    _waiting_since: float | None = None  # since when a connection has been left to a sibling

    def __init__(
        self,
        listener: Any,
        *,
        handler_class: Callable[..., Any],
        spawn: Any,
        application: Any = None,
        log: Any = None,
        environ: Any = None,
        **ssl_args: Any,
    ) -> None:
        # gunicorn passes its pywsgi arguments; this server hands each connection to the worker's
        # own handler (gunicorn's HTTP parser), as gunicorn's default server does.
        super().__init__(listener, handle=functools.partial(handler_class, listener), spawn=spawn, **ssl_args)
        if _siblings is not None:
            self.max_accept = 1  # one connection per wake-up, as gunicorn's with several workers
            _siblings.servers.append(self)

    def start_accepting(self) -> None:
        super().start_accepting()
        if self._beat is None and _siblings is not None:
            self._beat = self.loop.timer(BEAT_S, BEAT_S)
            self._beat.start(_siblings.publish)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._beat is not None:
                self._beat.stop()
                self._beat.close()
                self._beat = None
            if _siblings is not None:
                _siblings.publish()

    def _do_read(self) -> None:
        """A connection is waiting: take it, or leave it to a sibling holding fewer for a moment."""
        if _siblings is not None:
            now = time.monotonic()
            held = _siblings.publish()
            if self._waiting_since is not None and now - self._waiting_since > STALE_S:
                self._waiting_since = None  # that one was taken by a sibling after the last look
            if self._waiting_since is None or now - self._waiting_since < WAIT_S:
                # (holding no more than SLACK, no sibling can hold few enough: no need to look)
                if held > SLACK and fewer_elsewhere(held, _siblings.fewest(now)):
                    if self._waiting_since is None:
                        self._waiting_since = now
                    self.stop_accepting()
                    self._timer = self.loop.timer(RECHECK_S)
                    self._timer.start(self._look_again)
                    return
        self._waiting_since = None
        super()._do_read()

    def _look_again(self) -> None:
        """After RECHECK_S: if the sibling took the connection, nothing waits any more; accept again
        either way (a connection still waiting calls ``_do_read``, which may leave it once more)."""
        if self._waiting_since is not None and not self.closed:
            waiting = _poll()
            waiting.register(self.socket.fileno(), POLLIN)
            if not waiting.poll(0):
                self._waiting_since = None
        self._start_accepting_if_started()


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker that tells streams when it is stopping and shares new connections
    with its siblings (``BalancedServer``)."""

    server_class = BalancedServer

    @classmethod
    def setup(cls) -> None:
        """Called by gunicorn in the master before it forks any worker (and again on a reload):
        the table the workers share."""
        global _table
        if _table is None:
            _table = mmap.mmap(-1, _ENTRY.size * _ENTRIES)

    def init_process(self) -> None:
        global _siblings
        # With reuse_port each worker has a listening socket of its own: a connection left in it
        # would only wait, no sibling can take it. One worker has no sibling.
        if _table is not None and self.cfg.workers > 1 and not self.cfg.reuse_port:
            _siblings = Siblings(_table, self.age % _ENTRIES)
        self.wsgi_handler = self.handle  # what gunicorn gives server_class as its handler_class
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        settle_heap()

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: a graceful stop; streams must end before the grace period does."""
        stopping(self.cfg.graceful_timeout)
        self._leave()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: Any, frame: Any) -> None:
        """SIGQUIT / SIGINT: a quick stop."""
        self._leave()
        super().handle_quit(sig, frame)

    def _leave(self) -> None:
        """Siblings stop leaving connections to this worker at once (it keeps accepting for up to
        a second before gunicorn closes its listeners)."""
        if _siblings is not None:
            _siblings.leaving = True
            _siblings.publish()
