"""The SQLite admission store: a storage for ``limits`` and the concurrency slots, in one file per host.

Importing this module registers ``sqlite:///…`` URLs with ``limits.storage.storage_from_string``.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from limits.storage import SlidingWindowCounterSupport, Storage

from .admissions import Admitted, Checks, Hits, Slots
from .sqlite_file import Queued, SQLiteFile, sqlite_path
from .windows import Window, weighted_count

_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters"
    " (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS windows (key TEXT NOT NULL, window INTEGER NOT NULL,"
    " count INTEGER NOT NULL, PRIMARY KEY (key, window)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS slots (key TEXT NOT NULL, id TEXT NOT NULL,"
    " expires_at REAL NOT NULL, PRIMARY KEY (key, id)) WITHOUT ROWID",
    # slots_taken: how many rows each key has in slots, kept by the two triggers. Counting a key's
    # slots at every admission read one row per request in flight (a thousand streams: a thousand
    # rows per admission). Counted afresh when a process opens the file (an earlier version kept
    # slots without their counts).
    "CREATE TABLE IF NOT EXISTS slots_taken (key TEXT PRIMARY KEY, taken INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS slot_taken AFTER INSERT ON slots BEGIN INSERT INTO slots_taken"
    " VALUES (new.key, 1) ON CONFLICT(key) DO UPDATE SET taken = taken + 1; END",
    "CREATE TRIGGER IF NOT EXISTS slot_given_back AFTER DELETE ON slots BEGIN"
    " UPDATE slots_taken SET taken = taken - 1 WHERE key = old.key; END",
    "DELETE FROM slots_taken",
    "INSERT INTO slots_taken SELECT key, count(*) FROM slots GROUP BY key",
)


@dataclass(eq=False)
class _Batched(Queued):
    """An admission, or a request's end (slots given back, tokens counted), waiting for its turn
    in a batch; then its outcome."""

    admission: tuple[Slots, Checks, Hits] | None = None  # admit_all's arguments
    seen: list[Window] | None = None  # where an admission puts the windows it saw
    releases: list[tuple[str, str]] = field(default_factory=list)
    adds: list[tuple[str, int, int]] = field(default_factory=list)  # (window key, expiry, amount)


def _slots_taken(db: sqlite3.Connection, keys: set[str]) -> dict[str, int]:
    """How many slots each of ``keys`` holds (keys without any may be left out)."""
    if not keys:
        return {}
    marks = ", ".join("?" * len(keys))
    return dict(db.execute(f"SELECT key, taken FROM slots_taken WHERE key IN ({marks})", tuple(keys)))


def _window_counts(db: sqlite3.Connection, keys: set[str]) -> dict[tuple[str, int], int]:
    """The count of every stored window of ``keys``, by (key, window index)."""
    if not keys:
        return {}
    marks = ", ".join("?" * len(keys))
    rows = db.execute(f"SELECT key, window, count FROM windows WHERE key IN ({marks})", tuple(keys))
    return {(key, window): count for key, window, count in rows}


def _admit(
    slots: Slots,
    checks: Checks,
    taken: dict[str, int],
    counts: dict[tuple[str, int], int],
    now: float,
    seen: list[Window] | None = None,
) -> Admitted:
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
    return [_slot_id() for _ in slots], None


class _SlotIds:
    """Slot ids unique in the file: this process's random prefix and a count (a uuid4 per slot
    was a system call for randomness, twice a request). A forked child takes a prefix of its own."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.count = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}-{next(self.count)}"


_slot_ids = _SlotIds()
_slot_id = _slot_ids.next
os.register_at_fork(after_in_child=_slot_ids.restart)


class SQLiteStorage(SQLiteFile, Storage, SlidingWindowCounterSupport):
    """A ``limits`` storage in one SQLite file: every gunicorn worker on a host shares it."""

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self._next_sweep = 0.0
        SQLiteFile.__init__(self, sqlite_path(uri))
        Storage.__init__(self, uri, wrap_exceptions=wrap_exceptions, **options)
        with self._write() as db:
            for statement in _SQLITE_SCHEMA:
                db.execute(statement)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    # -- the storage contract of ``limits`` --

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM counters WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
                (key, amount, now + expiry, amount),
            )
            return int(db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()[0])

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
            db.execute("DELETE FROM slots_taken")
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

    def renew_all(self, slots: list[tuple[str, str]], ttl_s: float) -> int:
        """Give ``slots`` (key, id) ``ttl_s`` more from now; how many were still held (one given
        back, or past its time, is not taken again)."""
        now = time.time()
        with self._write() as db:
            return db.executemany(
                "UPDATE slots SET expires_at = ? WHERE key = ? AND id = ? AND expires_at > ?",
                [(now + ttl_s, key, slot, now) for key, slot in slots],
            ).rowcount

    # -- a whole admission in one transaction --

    def admit_all(
        self,
        slots: Slots,
        checks: Checks,
        hits: Hits,
        seen: list[Window] | None = None,
    ) -> Admitted:
        """Take every slot, check every window has room for one more, spend the ``hits``: all
        or nothing, in one write transaction (shared with whatever else is queued, see
        ``_batched``).

        ``slots`` are (key, limit, ttl_s); ``checks`` (key, expiry, limit); ``hits`` (key,
        expiry). Returns the slot ids, or the refusal: ("slot", i) or ("window", i, window).
        An admitted request's ``seen`` gets each checked window as it was before it (for the
        rate-limit headers).
        """
        admitted: Admitted = self._batched(_Batched(admission=(slots, checks, hits), seen=seen))
        return admitted

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
        operations: list[_Batched],
        added: dict[tuple[str, int], int],
        now: float,
    ) -> None:
        admissions = [(o, o.admission) for o in operations if o.admission is not None]
        if now >= self._next_sweep:
            self._sweep(db, now, [check for _, (_, checks, _) in admissions for check in checks])
        wanted: dict[str, int] = {}
        for _, (slots, _, _) in admissions:
            for key, _, _ in slots:
                wanted[key] = wanted.get(key, 0) + 1
        taken = _slots_taken(db, set(wanted))
        if any(
            taken.get(key, 0) + wanted[key] > limit
            for _, (slots, _, _) in admissions
            for key, limit, _ in slots
        ):
            # At a limit: slots past their time (their holder died) are given back first.
            marks = ", ".join("?" * len(wanted))
            db.execute(f"DELETE FROM slots WHERE key IN ({marks}) AND expires_at <= ?", (*wanted, now))
            taken = _slots_taken(db, set(wanted))
        counts = _window_counts(db, {key for _, (_, checks, _) in admissions for key, _, _ in checks})
        for window, n in added.items():
            counts[window] = counts.get(window, 0) + n
        new_slots: list[tuple[str, str, float]] = []
        for operation, (slots, checks, hits) in admissions:
            operation.result = ids, refusal = _admit(slots, checks, taken, counts, now, operation.seen)
            if refusal is not None:
                continue
            for (key, _, ttl_s), slot in zip(slots, ids, strict=True):
                taken[key] = taken.get(key, 0) + 1
                new_slots.append((key, slot, now + ttl_s))
            for key, expiry in hits:
                window = (key, int(now // expiry))
                counts[window] = counts.get(window, 0) + 1
                added[window] = added.get(window, 0) + 1
        db.executemany("INSERT INTO slots VALUES (?, ?, ?)", new_slots)

    def _sweep(self, db: sqlite3.Connection, now: float, windows: list[tuple[str, int, int]]) -> None:
        """Drop expired slots, keys without slots, and windows before the previous one, about once
        a second (this keeps the tables as small as what is live)."""
        self._next_sweep = now + 1.0
        db.execute("DELETE FROM slots WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM slots_taken WHERE taken <= 0")
        db.executemany(
            "DELETE FROM windows WHERE key = ? AND window < ?",
            [(key, int(now // expiry) - 1) for key, expiry, _ in windows],
        )


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
