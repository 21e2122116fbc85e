"""The usage journal: a local SQLite file holding the usage rows the ledger's database did not take
(away, refusing writes, or too slow at exit) until a writer replays them into it (README, "Usage
and cost").

Rows go in as JSON, one per line of the ``journal`` table, oldest first by ``seq``, each tagged
with the database it belongs to: several gateways on one host may share the file and each replays
only its own. A process replays while it holds the lock file beside the journal, so the workers of
a host never replay the same rows at once; a process killed mid-replay releases the lock with its
death, and the rows it had written but not yet deleted are recognised by the database's writer
(``Ledger``) and not written twice. The file exists only once a row needed it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .row import UsageRow
from .table import usage

log = logging.getLogger(__name__)

FORMAT = 1  # PRAGMA user_version of a journal this version reads and writes

_SCHEMA = (
    "CREATE TABLE journal ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ledger TEXT NOT NULL,"  # the database the row belongs to, without credentials
    " journaled_at TEXT NOT NULL,"
    " replay_after REAL NOT NULL,"  # unix time: a row in doubt waits until its write has settled
    " row TEXT NOT NULL)",
    "CREATE INDEX journal_ledger_seq ON journal (ledger, seq)",
    # How many rows each ledger has waiting, kept in the transactions that add and delete them:
    # counting the rows themselves would read the whole file.
    "CREATE TABLE waiting (ledger TEXT PRIMARY KEY, rows INTEGER NOT NULL)",
)
_COLUMNS_OF = {
    "journal": {"seq", "ledger", "journaled_at", "replay_after", "row"},
    "waiting": {"ledger", "rows"},
}
_COLUMNS = frozenset(c.name for c in usage.columns if c.name != "id")
# What a row journaled by an older version, which recorded fewer columns, holds in the newer ones.
_DEFAULTS = {f.name: f.default for f in fields(UsageRow) if f.default is not MISSING}


class JournalError(Exception):
    """The journal file cannot be used (its folder is not writable, the disk is full...)."""


class _Unreadable(Exception):
    """The file is not a journal this version reads: damaged, or of another format."""


class Replay(NamedTuple):
    """What one ``Journal.replay`` did."""

    rows: int  # written to the database
    emptied: bool  # nothing of this ledger is left in the journal
    reached: bool  # False when the database did not take a chunk (it is away)


def _encode(row: dict[str, Any]) -> str:
    return json.dumps(row, default=datetime.isoformat, separators=(",", ":"))


def _decode(text: str) -> dict[str, Any]:
    """A journaled row as the table takes it; KeyError or ValueError when it cannot be one."""
    values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError("not an object")
    row = {**_DEFAULTS, **{name: value for name, value in values.items() if name in _COLUMNS}}
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    for required in ("request_id", "api_key", "route"):
        if not isinstance(row[required], str):
            raise ValueError(f"no {required}")
    row.setdefault("client_ip", None)
    return row


class Journal:
    """The journal file at ``path`` as the ledger ``ledger`` (a URL without credentials) uses it."""

    chunk_rows = 500  # rows handed to the database at once when replaying
    wait_for_lock_s = 10.0  # how long opening waits for another process that checks the file

    def __init__(self, path: str, ledger: str) -> None:
        self.path = os.path.abspath(path)
        self.ledger = ledger
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    # -- the file ------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the file created) on first use. A file this
        version cannot read is set aside, said so in the log, and a new one started: a journal must
        never stop the gateway from starting."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # Held so that two processes never both set one file aside (the second would move the
            # new journal the first started). Not the replay's lock: opening never waits for a
            # replay's database writes.
            with self._flock(".open-lock", wait_s=self.wait_for_lock_s):
                try:
                    conn = self._open()
                except _Unreadable as e:
                    self._set_aside(str(e))
                    conn = self._open()
        except (OSError, sqlite3.Error) as e:
            raise JournalError(f"usage journal {self.path} cannot be used: {e}") from e
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        """A connection to the journal, created if need be; _Unreadable for a file that is not one
        this version reads (a busy or locked file is not that: it raises sqlite3.Error)."""
        created = not os.path.exists(self.path)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            if created:
                os.chmod(self.path, 0o600)  # usage rows: key names, addresses
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # no database: fails here
            if version == 0:
                tables = [
                    row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
                if tables:  # someone else's database: never moved, never written
                    raise JournalError(
                        f"usage journal {self.path} cannot be used: it is not a journal: it holds "
                        f"the tables {tables}; give the journal a file of its own"
                    )
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # an emptied journal gives space back
                conn.execute("PRAGMA journal_mode=WAL")
                with _transaction(conn):
                    if not conn.execute("PRAGMA user_version").fetchone()[0]:  # not made meanwhile
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {FORMAT}")
            elif version != FORMAT:
                raise _Unreadable(f"journal format {version}, this version reads {FORMAT}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable when a process dies; WAL makes it so
            for table, expected in _COLUMNS_OF.items():
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if columns != expected:
                    raise _Unreadable(f"its {table} table has the columns {sorted(columns)}")
        except sqlite3.DatabaseError as e:
            conn.close()
            if getattr(e, "sqlite_errorname", None) in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise _Unreadable(str(e)) from e
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_aside(self, why: str) -> None:
        """Move an unreadable file (and SQLite's files beside it) out of the way, keeping it."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = f"{self.path}.unreadable-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, aside + suffix)
        log.error(
            "usage journal %s cannot be read (%s): moved to %s and a new journal started; "
            "the rows in it are not replayed",
            self.path,
            why,
            aside,
        )

    @contextmanager
    def _flock(self, suffix: str, wait_s: float) -> Iterator[bool]:
        """Hold the lock file ``<journal><suffix>`` (True), or not within ``wait_s`` (False). A new
        descriptor each time: threads of one process exclude each other too."""
        fd = os.open(self.path + suffix, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = False
                        break
                    time.sleep(0.05)
            yield held
        finally:
            os.close(fd)  # releases the lock

    def close(self) -> None:
        """Close this process's connection (opened again on the next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- rows ----------------------------------------------------------------------------------

    def append(self, rows: list[dict[str, Any]], in_doubt_s: float = 0.0) -> None:
        """Add ``rows`` (as ``table.storable`` made them) in one transaction; JournalError when
        the file cannot take them. Rows in doubt (a write to the database that may still land)
        are not replayed before ``in_doubt_s`` has passed."""
        journaled_at = datetime.now(UTC).isoformat()
        after = time.time() + in_doubt_s
        lines = [(self.ledger, journaled_at, after, _encode(row)) for row in rows]
        try:
            with self._lock:
                conn = self._connection()
                with _transaction(conn):
                    conn.executemany(
                        "INSERT INTO journal (ledger, journaled_at, replay_after, row) VALUES (?, ?, ?, ?)",
                        lines,
                    )
                    _add_waiting(conn, self.ledger, len(lines))
        except sqlite3.Error as e:
            raise JournalError(f"usage journal {self.path} did not take {len(rows)} rows: {e}") from e

    def count(self) -> int:
        """Rows of this ledger waiting in the journal (0 when there is no file)."""
        rows = self._read("SELECT rows FROM waiting WHERE ledger = ?", (self.ledger,))
        return int(rows[0][0]) if rows else 0

    def others(self) -> dict[str, int]:
        """Rows waiting for other databases (gateways with another ledger that share the file)."""
        rows = self._read("SELECT ledger, rows FROM waiting WHERE ledger != ? AND rows > 0", (self.ledger,))
        return {ledger: n for ledger, n in rows}

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        if self._conn is None and not os.path.exists(self.path):
            return []  # nothing was ever journaled here
        try:
            with self._lock:
                return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise JournalError(f"usage journal {self.path} cannot be read: {e}") from e

    def replay(self, write: Callable[[list[dict[str, Any]]], bool], budget_s: float) -> Replay:
        """Hand this ledger's rows to ``write`` oldest first, a chunk at a time, deleting a chunk
        once ``write`` says it is in the database; stop when the journal is empty, ``write`` says
        False (the database is away) or ``budget_s`` is spent. Only one process replays a journal
        at a time: another one's replay is left to it."""
        if not self.count():
            return Replay(0, True, True)
        written = 0
        deadline = time.monotonic() + budget_s
        with self._flock(".lock", wait_s=0) as held:
            if not held:
                return Replay(0, False, True)
            while True:
                chunk = self._read(
                    "SELECT seq, row, replay_after FROM journal WHERE ledger = ? ORDER BY seq LIMIT ?",
                    (self.ledger, self.chunk_rows),
                )
                if not chunk:
                    self._vacuum()
                    return Replay(written, True, True)
                now = time.time()
                in_doubt = [i for i, (_, _, after) in enumerate(chunk) if after > now]
                if in_doubt:  # rows whose write may still land: up to the first, then a later look
                    chunk = chunk[: in_doubt[0]]
                    if not chunk:
                        return Replay(written, False, True)
                rows = []
                for seq, text, _ in chunk:
                    try:
                        rows.append(_decode(text))
                    except (ValueError, KeyError, TypeError) as e:
                        log.error(
                            "usage journal %s: row %d cannot be read and is left out (%s)", self.path, seq, e
                        )
                if rows and not write(rows):
                    return Replay(written, False, False)
                self._delete([seq for seq, _, _ in chunk])
                written += len(rows)
                if time.monotonic() >= deadline:
                    return Replay(written, False, True)

    def _vacuum(self) -> None:
        """Give an emptied journal's pages back to the disk (a long outage can leave gigabytes)."""
        try:
            with self._lock:
                self._connection().execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as e:
            log.warning("usage journal %s: giving space back failed: %s", self.path, e)

    def _delete(self, seqs: list[int]) -> None:
        try:
            with self._lock:
                conn = self._connection()
                with _transaction(conn):
                    deleted = conn.execute("DELETE FROM journal WHERE seq BETWEEN ? AND ? AND ledger = ?",
                                           (min(seqs), max(seqs), self.ledger)).rowcount  # fmt: skip
                    _add_waiting(conn, self.ledger, -deleted)
        except sqlite3.Error as e:
            raise JournalError(f"usage journal {self.path}: replayed rows cannot be deleted: {e}") from e


def _add_waiting(conn: sqlite3.Connection, ledger: str, rows: int) -> None:
    conn.execute(
        "INSERT INTO waiting (ledger, rows) VALUES (?, ?) ON CONFLICT (ledger) DO UPDATE SET rows = rows + ?",
        (ledger, rows, rows),
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
