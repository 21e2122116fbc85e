"""One SQLite file shared by every gunicorn worker of a host: a connection per process, write
transactions taken in turn across processes, and the operations a process has waiting run
together in one transaction.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..workers import on_greenlets


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` → ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError(f"not a sqlite file URL: {url!r}")
    return url[len("sqlite:///") :]


class _Connection(NamedTuple):
    db: sqlite3.Connection
    lock: int  # a descriptor of the lock file beside the database


@contextmanager
def _transaction(connection: _Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, taken in turn with every other process's writers of the file."""
    db, lock = connection
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _taken_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class Queued:
    """An operation waiting for its turn in a batch (see ``SQLiteFile._batched``); then its
    outcome."""

    done: bool = False
    # Released when done, for a thread waiting on another to run it (not made under gevent, where
    # nothing waits). A bare lock rather than an Event: an Event is a Condition, whose
    # Python-level bookkeeping cost more under load than the work it waited for.
    finished: threading.Lock | None = None
    result: Any = None
    error: BaseException | None = None


_FILES: weakref.WeakSet[SQLiteFile] = weakref.WeakSet()


def _after_fork() -> None:
    for file in _FILES:
        file._forget_connection()


os.register_at_fork(after_in_child=_after_fork)


class SQLiteFile:
    """The file at ``path``, opened on first use (and again in a forked child).

    Subclasses that batch operations (``_batched``) implement ``_run_batch``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._forget_connection()
        _FILES.add(self)

    def _forget_connection(self) -> None:
        """Start without a connection (and, after a fork, leave the parent's to the parent)."""
        self._lock = threading.Lock()
        self._open: _Connection | None = None
        self._pending: deque[Queued] = deque()

    def _connect(self) -> _Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        for attempt in range(50):  # switching to WAL needs a moment alone with the file
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                time.sleep(0.02 * (attempt + 1))
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-256")  # KiB: the tables are tiny
        # Writers queue on a kernel lock beside the file (each connection its own descriptor:
        # flock belongs to the open file, not the thread). A waiter wakes the moment the lock
        # is free; SQLite's own busy handler sleeps 1, 2, 5, 10… ms instead, which made the
        # slowest admissions take tens of milliseconds under load.
        return _Connection(db, os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600))

    @contextmanager
    def _connection(self) -> Iterator[_Connection]:
        """This process's one connection, to one thread at a time. Writers take turns on the file
        anyway; a connection per thread cost memory, and a pool cost a Python-level queue."""
        with self._lock:
            yield self._opened()
        self._run_pending()

    def _opened(self) -> _Connection:
        if self._open is None:
            self._open = self._connect()
        return self._open

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken in turn with every other writer of the file."""
        with self._connection() as connection, _transaction(connection) as db:
            yield db

    def read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A query's rows, outside any write transaction: for the stores beside these tables."""
        return self._read(sql, args)

    def transaction(self) -> Any:
        """A write transaction on this file (a context manager giving the connection), taken in
        turn with every other writer: for the stores that keep their tables beside these."""
        return self._write()

    def _batched(self, operation: Queued) -> Any:
        """Run ``operation`` in a transaction with every other one waiting in this process.

        Every request admits and releases; one at a time, each would be a turn at the lock and
        at the GIL for each statement, and under load the threads queued for those turns (at 64
        connections over 2 workers, half their time). Instead a thread queues its operation, and
        whichever thread gets the connection runs all queued operations in one transaction, with
        one query for all their counts and one ``executemany`` for all their writes.
        """
        if on_greenlets():
            # Under gevent a SQLite call never yields, so nothing can queue behind it: run the
            # operation at once (and a lock wait with a timeout would be a timer each time).
            with self._lock:
                self._pending.append(operation)
                self._apply(self._opened())
        else:
            operation.finished = _taken_lock()
            self._pending.append(operation)
            while not operation.done:
                if self._lock.acquire(blocking=False):
                    try:
                        self._apply(self._opened())
                    finally:
                        self._lock.release()
                else:  # the thread holding the connection runs it (or, had it just finished, we do)
                    operation.finished.acquire(timeout=0.002)
            self._run_pending()
        if operation.error is not None:
            raise operation.error
        return operation.result

    def _run_pending(self) -> None:
        """Run what was queued while the connection was taken, if nobody else is about to."""
        while self._pending and self._lock.acquire(blocking=False):
            try:
                self._apply(self._opened())
            finally:
                self._lock.release()

    def _apply(self, connection: _Connection) -> None:
        batch: list[Queued] = []
        while True:
            try:
                batch.append(self._pending.popleft())
            except IndexError:
                break
        if not batch:
            return
        try:
            with _transaction(connection) as db:
                self._run_batch(db, batch, time.time())
        except BaseException as e:  # every operation of the batch fails with it
            for operation in batch:
                operation.error = e
        finally:
            for operation in batch:
                operation.done = True
                if operation.finished is not None:
                    operation.finished.release()

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._connection() as (db, _):
            rows: list[tuple[Any, ...]] = db.execute(sql, args).fetchall()
            return rows

    def _run_batch(self, db: sqlite3.Connection, batch: list[Any], now: float) -> None:
        """Run every queued operation of ``batch`` in the open transaction ``db``."""
        raise NotImplementedError
