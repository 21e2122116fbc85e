"""The SQLite store: a storage for ``limits``, concurrency slots and idempotency records, in one file.

Importing this module registers ``sqlite:///…`` URLs with ``limits.storage.storage_from_string``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from limits.storage import SlidingWindowCounterSupport, Storage

from ..workers import on_greenlets
from . import Record, SingleSlots, weighted_count

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    key TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (key, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slots (
    key TEXT NOT NULL, id TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (key, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, state TEXT NOT NULL, running_until REAL NOT NULL,
    expires_at REAL NOT NULL, status INTEGER, content_type TEXT, headers TEXT, body BLOB
);
"""


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
class _Batched:
    """An admission, or a request's end (slots given back, tokens counted), waiting for its turn
    in a batch; then its outcome."""

    admission: tuple[list, list, list] | None = None  # admit_all's arguments
    seen: list | None = None  # where an admission puts the windows it saw
    releases: list[tuple[str, str]] = field(default_factory=list)
    adds: list[tuple[str, int, int]] = field(default_factory=list)  # (window key, expiry, amount)
    done: bool = False
    # Released when done. A bare lock rather than an Event: an Event is a Condition, whose
    # Python-level bookkeeping cost more under load than the work it waited for.
    finished: threading.Lock = field(default_factory=_taken_lock)
    result: Any = None
    error: BaseException | None = None


def _slots_taken(db: sqlite3.Connection, keys: set[str], now: float) -> dict[str, int]:
    """How many live slots each of ``keys`` holds (keys without any are left out)."""
    if not keys:
        return {}
    marks = ", ".join("?" * len(keys))
    sql = f"SELECT key, count(*) FROM slots WHERE key IN ({marks}) AND expires_at > ? GROUP BY key"
    return dict(db.execute(sql, (*keys, now)))


def _window_counts(db: sqlite3.Connection, keys: set[str]) -> dict[tuple[str, int], int]:
    """The count of every stored window of ``keys``, by (key, window index)."""
    if not keys:
        return {}
    marks = ", ".join("?" * len(keys))
    rows = db.execute(f"SELECT key, window, count FROM windows WHERE key IN ({marks})", tuple(keys))
    return {(key, window): count for key, window, count in rows}


def _admit(
    slots: list[tuple[str, int, float]],
    checks: list[tuple[str, int, int]],
    taken: dict[str, int],
    counts: dict[tuple[str, int], int],
    now: float,
    seen: list | None = None,
) -> tuple[list[str], tuple | None]:
    """One admission's decision against the current counts: slot ids, or the refusal. ``seen``
    gets every window as it was before this request."""
    for i, (key, limit, _) in enumerate(slots):
        if taken.get(key, 0) >= limit:
            return [], ("slot", i)
    windows = [_sliding(counts, key, expiry, now) for key, expiry, _ in checks]
    for i, ((_, expiry, limit), window) in enumerate(zip(checks, windows, strict=True)):
        if weighted_count(window, expiry) + 1 > limit:
            return [], ("window", i, window)
    if seen is not None:
        seen.extend(windows)
    return [uuid.uuid4().hex for _ in slots], None


_STORAGES: weakref.WeakSet[SQLiteStorage] = weakref.WeakSet()


def _after_fork() -> None:
    for storage in _STORAGES:
        storage._forget_connection()


os.register_at_fork(after_in_child=_after_fork)


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` → ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError(f"not a sqlite file URL: {url!r}")
    return url[len("sqlite:///") :]


class _Connection(NamedTuple):
    db: sqlite3.Connection
    lock: int  # a descriptor of the lock file beside the database


class SQLiteStorage(SingleSlots, Storage, SlidingWindowCounterSupport):
    """A ``limits`` storage in one SQLite file: every gunicorn worker on a host shares it."""

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self.path = sqlite_path(uri)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._forget_connection()
        _STORAGES.add(self)
        self._next_sweep = 0.0
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        with self._write() as db:
            for statement in _SQLITE_SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _forget_connection(self) -> None:
        """Start without a connection (and, after a fork, leave the parent's to the parent)."""
        self._lock = threading.Lock()
        self._open: _Connection | None = None
        self._pending: deque[_Batched] = deque()

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

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

    def read(self, sql: str, args: tuple) -> list[tuple]:
        """A query's rows, outside any write transaction: for the stores beside these tables."""
        return self._read(sql, args)

    def transaction(self) -> Any:
        """A write transaction on this file (a context manager giving the connection), taken in
        turn with every other writer: for the stores that keep their tables beside these."""
        return self._write()

    # -- admissions and releases, batched --

    def _batched(self, operation: _Batched) -> Any:
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
        batch: list[_Batched] = []
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
                operation.finished.release()

    def _read(self, sql: str, args: tuple) -> list[tuple]:
        with self._connection() as (db, _):
            return db.execute(sql, args).fetchall()

    # -- the storage contract of ``limits`` --

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM counters WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
                (key, amount, now + expiry, amount),
            )
            return db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()[0]

    def get(self, key: str) -> int:
        rows = self._read("SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, time.time()))
        return rows[0][0] if rows else 0

    def get_expiry(self, key: str) -> float:
        rows = self._read("SELECT expires_at FROM counters WHERE key = ?", (key,))
        return rows[0][0] if rows else time.time()

    def check(self) -> bool:
        try:
            self._read("SELECT 1", ())
            return True
        except sqlite3.Error:
            return False

    def reset(self) -> int | None:
        with self._write() as db:
            return sum(db.execute(f"DELETE FROM {t}").rowcount for t in ("counters", "windows", "slots"))

    def clear(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM counters WHERE key = ?", (key,))

    def _window(
        self, db: sqlite3.Connection, key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        rows = db.execute("SELECT window, count FROM windows WHERE key = ?", (key,))
        return _sliding({(key, window): count for window, count in rows}, key, expiry, now)

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        with self._connection() as (db, _):
            return self._window(db, key, expiry, time.time())

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self._write() as db:
            now = time.time()
            if weighted_count(self._window(db, key, expiry, now), expiry) + amount > limit:
                return False
            self._add(db, key, expiry, now, amount)
        return True

    @staticmethod
    def _add(db: sqlite3.Connection, key: str, expiry: int, now: float, amount: int) -> None:
        window = int(now // expiry)
        db.execute(_ADD_TO_WINDOW, (key, window, amount))
        db.execute("DELETE FROM windows WHERE key = ? AND window < ?", (key, window - 1))

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM windows WHERE key = ?", (key,))

    # -- a request's end in one transaction --

    def finish_all(self, slots: list[tuple[str, str]], counted: list[tuple[str, int, int]]) -> None:
        """Release ``slots`` and add to windows (``counted``: key, expiry, amount) at once."""
        self._batched(_Batched(releases=slots, adds=counted))

    # -- a whole admission in one transaction --

    def admit_all(
        self,
        slots: list[tuple[str, int, float]],
        checks: list[tuple[str, int, int]],
        hits: list[tuple[str, int]],
        seen: list | None = None,
    ) -> tuple[list[str], tuple | None]:
        """Take every slot, check every window has room for one more, spend the ``hits``: all
        or nothing, in one write transaction (shared with whatever else is queued, see
        ``_batched``).

        ``slots`` are (key, limit, ttl_s); ``checks`` (key, expiry, limit); ``hits`` (key,
        expiry). Returns the slot ids, or the refusal: ("slot", i) or ("window", i, window).
        An admitted request's ``seen`` gets each checked window as it was before it (for the
        rate-limit headers).
        """
        return self._batched(_Batched(admission=(slots, checks, hits), seen=seen))

    def _run_batch(self, db: sqlite3.Connection, batch: list[_Batched], now: float) -> None:
        """Releases and counted tokens first (an admission in the same batch sees them), then each
        admission in turn against the counts as the ones before it left them, then the writes:
        one query and one ``executemany`` each, whatever the batch holds."""
        releases = [slot for operation in batch for slot in operation.releases]
        if releases:
            db.executemany("DELETE FROM slots WHERE key = ? AND id = ?", releases)
        added: dict[tuple[str, int], int] = {}
        for operation in batch:
            for key, expiry, amount in operation.adds:
                window = (key, int(now // expiry))
                added[window] = added.get(window, 0) + amount
        admissions = [operation for operation in batch if operation.admission is not None]
        if admissions:
            self._admit_batch(db, admissions, added, now)
        if added:
            db.executemany(_ADD_TO_WINDOW, [(key, window, n) for (key, window), n in added.items()])

    def _admit_batch(
        self,
        db: sqlite3.Connection,
        admissions: list[_Batched],
        added: dict[tuple[str, int], int],
        now: float,
    ) -> None:
        taken = _slots_taken(db, {key for o in admissions for key, _, _ in o.admission[0]}, now)
        counts = _window_counts(db, {key for o in admissions for key, _, _ in o.admission[1]})
        for window, n in added.items():
            counts[window] = counts.get(window, 0) + n
        new_slots: list[tuple[str, str, float]] = []
        for operation in admissions:
            slots, checks, hits = operation.admission
            operation.result = _admit(slots, checks, taken, counts, now, operation.seen)
            if operation.result[1] is not None:
                continue
            for (key, _, ttl_s), slot in zip(slots, operation.result[0], strict=True):
                taken[key] = taken.get(key, 0) + 1
                new_slots.append((key, slot, now + ttl_s))
            for key, expiry in hits:
                window = (key, int(now // expiry))
                counts[window] = counts.get(window, 0) + 1
                added[window] = added.get(window, 0) + 1
        db.executemany("INSERT INTO slots VALUES (?, ?, ?)", new_slots)
        if now >= self._next_sweep:
            self._sweep(db, now, [check for o in admissions for check in o.admission[1]])

    def _sweep(self, db: sqlite3.Connection, now: float, windows: list[tuple[str, int, int]]) -> None:
        """Drop expired slots, and windows before the previous one, about once a second (the
        queries skip them anyway; this keeps the tables as small as what is live)."""
        self._next_sweep = now + 1.0
        db.execute("DELETE FROM slots WHERE expires_at <= ?", (now,))
        db.executemany(
            "DELETE FROM windows WHERE key = ? AND window < ?",
            [(key, int(now // expiry) - 1) for key, expiry, _ in windows],
        )

    # -- idempotency keys --

    def claim(self, key: str, body_hash: str, running_s: float, ttl_s: float) -> Record | None:
        """Claim ``key`` for a new request (None), or return the record that holds it. A running
        record whose request outlived ``running_s`` (a crashed worker) is taken over."""
        with self._write() as db:
            now = time.time()
            db.execute("DELETE FROM idempotency WHERE key = ? AND expires_at <= ?", (key, now))
            row = db.execute(f"SELECT {_RECORD} FROM idempotency WHERE key = ?", (key,)).fetchone()
            if row is not None and not (row[1] == "running" and row[2] <= now):
                return _record(row)
            db.execute(
                "INSERT OR REPLACE INTO idempotency (key, body_hash, state, running_until, expires_at)"
                " VALUES (?, ?, 'running', ?, ?)",
                (key, body_hash, now + running_s, now + ttl_s),
            )
        return None

    def finish(self, key: str, answer: Record) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE idempotency SET state = ?, status = ?, content_type = ?, headers = ?, body = ?"
                " WHERE key = ?",
                (
                    answer.state,
                    answer.status,
                    answer.content_type,
                    json.dumps(answer.headers),
                    answer.body,
                    key,
                ),
            )

    def release(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND state = 'running'", (key,))


def _sliding(
    counts: dict[tuple[str, int], int], key: str, expiry: int, now: float
) -> tuple[int, float, int, float]:
    """``key``'s window as ``get_sliding_window`` returns it, from its (key, window) counts.

    Windows are aligned to multiples of ``expiry``, as in limits' MemoryStorage.
    """
    current = int(now // expiry)
    previous_count, current_count = counts.get((key, current - 1), 0), counts.get((key, current), 0)
    to_end = (current + 1) * expiry - now
    return previous_count, (to_end if previous_count else 0.0), current_count, to_end + expiry


_ADD_TO_WINDOW = (
    "INSERT INTO windows VALUES (?, ?, ?) "
    "ON CONFLICT(key, window) DO UPDATE SET count = count + excluded.count"
)
_RECORD = "body_hash, state, running_until, status, content_type, headers, body"


def _record(row: tuple) -> Record:
    return Record(row[0], row[1], row[3], row[4], json.loads(row[5]) if row[5] else {}, row[6])
