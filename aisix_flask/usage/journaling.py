"""What a ledger puts in its local journal and takes back out: the rows the database did not take,
replayed as soon as it answers, and what the log and the gauge say of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .. import metrics
from .database import LedgerDatabase
from .journal import Journal, JournalError, Replay
from .row import UsageRow
from .table import storable

log = logging.getLogger("aisix_flask.usage.ledger")  # the ledger's lines, under the ledger's name


class Journaling:
    """A process's side of the journal: what it put there, and when it looks again."""

    def __init__(self, journal: Journal, database: LedgerDatabase) -> None:
        self.journal, self.database = journal, database
        self.dirty = False  # this process journaled rows not yet replayed
        self.journaled = 0  # rows this process put in the journal
        self._look_at = 0.0  # when the writer next looks at the journal
        self._error_told_at = -60.0

    def put(self, rows: list[dict[str, Any]], in_doubt_s: float = 0.0) -> None:
        """Put ``rows`` in the journal (JournalError when it does not take them); this process
        replays them as soon as the database answers."""
        if not rows:
            return
        self.journal.append(rows, in_doubt_s)
        self.journaled += len(rows)
        self.dirty = True

    def overflow(self, row: UsageRow) -> None:
        """The writer is stuck on the database (a write in flight for over ``stuck_s``, or a full
        queue): the row goes to the journal from here, where a killed worker cannot lose it."""
        try:
            self.put([storable(row)])
        except JournalError as e:
            metrics.LEDGER_ROWS_DROPPED.inc()
            self.tell_error(f"usage ledger: row of request {row.request_id} lost: {e}")

    def tell_error(self, message: str) -> None:
        """Log a journal failure once a minute: every row or look would say it again."""
        now = time.monotonic()
        if now >= self._error_told_at + 60:
            self._error_told_at = now
            log.error("%s", message)

    def at_start(self) -> bool:
        """At a worker's start: say what an earlier run left in the journal; True when rows wait
        for this ledger's database (the writer writes them as soon as it answers). A journal file
        this version cannot read is set aside (logged), and the gateway serves."""
        try:
            waiting, others = self.journal.count(), self.journal.others()
        except Exception as e:  # never a worker that cannot boot
            log.error("%s", e)
            return False
        metrics.LEDGER_JOURNAL_ROWS.set(waiting)
        for database, rows in others.items():
            log.warning(
                "usage ledger: the journal %s holds %d rows for another database, %s; a gateway "
                "whose ledger is that database replays them (flask aisix ledger status)",
                self.journal.path,
                rows,
                database,
            )
        if waiting:
            log.warning(
                "usage ledger: %d rows from an earlier run wait in the journal %s; they are "
                "written to the database as soon as it answers",
                waiting,
                self.journal.path,
            )
            self.dirty = True
        return bool(waiting)

    def keep(self, rows: list[dict[str, Any]], pause: Callable[[float], bool]) -> None:
        """Put rows the database did not take in the journal; while neither takes them, try both
        again after ``pause(seconds)``, until it answers True (close() gives up on them)."""
        wait_s = self.database.retry_s
        while True:
            try:
                self.put(rows)
                return
            except JournalError as e:
                log.error("%s; trying again", e)
            if pause(wait_s):
                log.error(
                    "usage ledger: %d rows lost: neither the database nor the journal took them", len(rows)
                )
                metrics.LEDGER_ROWS_DROPPED.inc(len(rows))
                return
            rows = self.database.insert(rows, dedupe=True)  # a failed commit may have landed
            if not rows:
                return
            wait_s = min(wait_s * 2, self.database.retry_max_s)

    def replay_when_due(self, idle_s: float, budget_s: float) -> None:
        """Between batches: replay the journal while the database answers. Rows this process
        journaled are replayed as soon as it does; the journal is looked at every ``idle_s`` for
        rows another worker or an earlier run left (and for the gauge)."""
        now = time.monotonic()
        look = now >= self._look_at
        if not look and not (self.dirty and not self.database.away()):
            return
        if look:
            self._look_at = now + idle_s
        try:
            if not self.database.away():
                self.replay(budget_s)
            if look:
                metrics.LEDGER_JOURNAL_ROWS.set(self.journal.count())
        except JournalError as e:
            self.tell_error(str(e))

    def replay(self, budget_s: float) -> Replay:
        """Write what waits in the journal to the database, for ``budget_s`` at most (JournalError
        when the file cannot be read)."""
        done = self.journal.replay(lambda rows: not self.database.insert(rows, dedupe=True), budget_s)
        if done.emptied:
            self.dirty = False
            metrics.LEDGER_JOURNAL_ROWS.set(0)
        if done.rows:
            log.warning(
                "usage ledger: %d rows replayed from the journal %s%s",
                done.rows,
                self.journal.path,
                "; it is empty" if done.emptied else "",
            )
        return done

    def leftovers(
        self, rows: list[dict[str, Any]], in_doubt: list[dict[str, Any]], in_doubt_s: float, drain_s: float
    ) -> None:
        """The drain time is up: the rows still queued, and the batch the writer holds (it may yet
        reach the database: a replay does not write it twice, once ``in_doubt_s`` has passed), go
        to the journal."""
        if not rows and not in_doubt:
            return
        try:
            self.put(rows)
            # The write in flight may still land: replayed only once it has surely settled.
            self.put(in_doubt, in_doubt_s=in_doubt_s)
        except JournalError as e:
            log.error("usage ledger: %d rows not written at exit: %s", len(rows) + len(in_doubt), e)
            metrics.LEDGER_ROWS_DROPPED.inc(len(rows) + len(in_doubt))
            return
        log.error(
            "usage ledger: the database did not take %d rows within %g s of the stop; they are in "
            "the journal %s",
            len(rows) + len(in_doubt),
            drain_s,
            self.journal.path,
        )

    def say_what_waits(self) -> None:
        """At a stop, when this process journaled rows: how many wait for the next start."""
        if not self.journaled:
            return
        try:
            waiting = self.journal.count()
        except JournalError as e:
            log.error("%s", e)
            return
        if waiting:
            log.warning(
                "usage ledger: %d rows wait in the journal %s (%d put there by this worker); they "
                "are written to the database when it answers, at the latest by the next start",
                waiting,
                self.journal.path,
                self.journaled,
            )

    def rows(self) -> int | None:
        """Rows waiting in the journal for this ledger's database; None when it cannot be read."""
        try:
            return self.journal.count()
        except JournalError as e:
            self.tell_error(str(e))
            return None
