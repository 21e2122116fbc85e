"""A request's admission and its end on the SQLite file, a transaction each (batched with whatever
else the process has queued): the ``AdmissionStore`` of ``stores.sqlite.SQLiteStorage``, whose
tables (windows, slots and their counts) it reads and writes."""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field

from .admissions import Admitted, Checks, Hits, Slots
from .sqlite_file import Queued, SQLiteFile
from .windows import Window, sliding_window, weighted_count

# A window's count (requests or tokens) raised by the amount given.
ADD_TO_WINDOW = (
    "INSERT INTO windows VALUES (?, ?, ?) "
    "ON CONFLICT(key, window) DO UPDATE SET count = count + excluded.count"
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
    windows = [sliding_window(counts, key, expiry, now) for key, expiry, _ in checks]
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


class SQLiteAdmissions(SQLiteFile):
    """Whole admissions and whole ends of requests, each in one transaction on the file."""

    def __init__(self, path: str) -> None:
        self._next_sweep = 0.0
        SQLiteFile.__init__(self, path)

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
            db.executemany(ADD_TO_WINDOW, [(key, window, n) for (key, window), n in added.items()])

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
