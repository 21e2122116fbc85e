"""The rate limits' SQLite store: a storage for ``limits`` and the tables of windows and concurrency
slots, in one file per host (a request's admission and end on them: ``sqlite_admissions``).

Importing this module registers ``sqlite:///…`` URLs with ``limits.storage.storage_from_string``.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from limits.storage import SlidingWindowCounterSupport, Storage

from .sqlite_admissions import ADD_TO_WINDOW, SQLiteAdmissions
from .sqlite_file import sqlite_path
from .windows import sliding_window, weighted_count

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


class SQLiteStorage(SQLiteAdmissions, Storage, SlidingWindowCounterSupport):
    """A ``limits`` storage in one SQLite file: every gunicorn worker on a host shares it."""

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        SQLiteAdmissions.__init__(self, sqlite_path(uri))
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
        return sliding_window({(key, window): count for window, count in rows}, key, expiry, now)

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
        db.execute(ADD_TO_WINDOW, (key, window, amount))
        db.execute("DELETE FROM windows WHERE key = ? AND window < ?", (key, window - 1))

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM windows WHERE key = ?", (key,))
