"""The usage ledger: one row per proxied request, written off the request thread to the database,
or to the local journal while the database does not take it (reading it: ``report``)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from .. import metrics
from .backlog import Backlog
from .database import LedgerDatabase
from .journal import Journal, JournalError, Replay
from .report import LedgerQueries
from .row import UsageRow
from .table import ledger_name, storable

log = logging.getLogger(__name__)

DEFAULT_JOURNAL = "var/usage-journal.db"
# Rows a worker holds in memory while its writer is busy: about a minute of the bench's c=64
# rate (~1,000 calls a second on two cores). Past it a row goes straight to the journal.
DEFAULT_QUEUE_ROWS = 60_000


class Ledger(LedgerQueries):
    """Queues rows from request threads; one writer thread per process inserts them in batches.

    A batch the database does not take goes to the journal, and so does every batch after it until
    the database answers again (``LedgerDatabase.away``); then the writer replays the journal
    between batches, oldest first. At exit, rows still queued after ``drain_timeout_s`` go to the
    journal too.
    """

    batch_size = 500
    # After a batch's first row, wait this long for more. The writer then wakes a few times a
    # second instead of once per request: one insert for many rows costs far less CPU, and a
    # writer busy in Python for every row holds the GIL just when request threads come back
    # from I/O (the rate limiter's SQLite calls measured 4x slower beside a per-row writer).
    # It is also what a killed worker can lose (README, "Usage and cost").
    linger_s = 0.2
    drain_timeout_s = 10.0
    idle_s = 2.0  # how often an idle writer looks at the journal
    replay_budget_s = 1.0  # replaying for this long at most, then new rows get their turn
    # A batch in flight this long: the database does not answer, and new rows go to the journal
    # at once instead of waiting in memory (README: what a killed worker can lose).
    stuck_s = 1.0
    in_doubt_s = 60.0  # a batch journaled while its write may still land waits this long

    def __init__(
        self, url: str, journal: str = DEFAULT_JOURNAL, queue_rows: int = DEFAULT_QUEUE_ROWS
    ) -> None:
        self.url = url
        self.journal = Journal(journal, ledger_name(url))
        while_away = f"usage rows go to the journal {self.journal.path} until it answers"
        self.database = LedgerDatabase(url, while_away)
        self.engine, self.health = self.database.engine, self.database.health
        self._lock = threading.Lock()
        self._queue_rows = queue_rows
        self._backlog = Backlog(queue_rows)
        self._in_flight: list[dict[str, Any]] | None = None  # the batch being written
        self._in_flight_since: float | None = None
        self._pid: int | None = None  # the process whose writer thread runs
        self._engine_pid = os.getpid()  # the process whose connections the pool holds
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # set by close()
        self._journal_dirty = False  # this process journaled rows not yet replayed
        self._look_at = 0.0  # when the writer next looks at the journal
        self._journaled = 0  # rows this process put in the journal
        self._journal_error_told_at = -60.0

    # -- request threads -----------------------------------------------------------------------

    def record(self, row: UsageRow) -> None:
        """Queue ``row``; the caller does not wait for the database."""
        if not self._writer_alive():
            self._start_writer()
        since = self._in_flight_since
        if since is not None and time.monotonic() - since > self.stuck_s:
            self._overflow(row)  # the writer waits on a database that does not answer
        elif not self._backlog.put(row):
            self._overflow(row)

    def _overflow(self, row: UsageRow) -> None:
        """The writer is stuck on the database (a write in flight for over ``stuck_s``, or a full
        queue): the row goes to the journal from here, where a killed worker cannot lose it."""
        try:
            self._journal([storable(row)])
        except JournalError as e:
            metrics.LEDGER_ROWS_DROPPED.inc()
            self._tell_journal_error(f"usage ledger: row of request {row.request_id} lost: {e}")

    def _journal(self, rows: list[dict[str, Any]], in_doubt_s: float = 0.0) -> None:
        """Put ``rows`` in the journal (JournalError when it does not take them); this process
        replays them as soon as the database answers."""
        if not rows:
            return
        self.journal.append(rows, in_doubt_s)
        self._journaled += len(rows)
        self._journal_dirty = True

    def _tell_journal_error(self, message: str) -> None:
        """Log a journal failure once a minute: every row or look would say it again."""
        now = time.monotonic()
        if now >= self._journal_error_told_at + 60:
            self._journal_error_told_at = now
            log.error("%s", message)

    # -- the writer thread ---------------------------------------------------------------------

    def start(self) -> None:
        """At a worker's start: rows an earlier run left in the journal are written to the
        database as soon as it answers. A journal file this version cannot read is set aside
        (logged), and the gateway serves."""
        try:
            waiting, others = self.journal.count(), self.journal.others()
        except Exception as e:  # never a worker that cannot boot
            log.error("%s", e)
            return
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
            self._journal_dirty = True
            self._start_writer()

    def restart_stopped_writer(self) -> bool:
        """Start this process's writer again if it had stopped; True when it had (then /readyz
        and the log say so, once). A writer not yet needed has not stopped."""
        if self._pid != os.getpid() or self._writer_alive():
            return False
        self._start_writer()
        return True

    def _writer_alive(self) -> bool:
        """Whether this process's writer thread runs."""
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def _start_writer(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                if self._writer_alive():
                    return
                # Cannot happen by design (_run survives any row); if it does, the queued rows
                # are still there, and a new writer takes them.
                log.error("usage ledger writer had stopped; starting it again")
                metrics.LEDGER_WRITER_RESTARTS.inc()
            else:
                # After a fork the parent's thread is gone: start this process's own, and
                # leave the parent's connections to the parent.
                self._backlog = Backlog(self._queue_rows)
                if self._engine_pid != os.getpid():
                    self.engine.dispose(close=False)
                    self._engine_pid = os.getpid()
                atexit.register(self.close)
            self._stopping = threading.Event()  # a writer given up on at close() keeps its own
            self._thread = threading.Thread(
                target=self._run, args=(self._stopping,), name="aisix-ledger", daemon=True
            )
            self._thread.start()
            metrics.LEDGER_WRITER_UP.set(1)
            self._pid = os.getpid()

    def _run(self, stopping: threading.Event) -> None:
        try:
            while not stopping.is_set():
                batch = self._backlog.next_batch(self.batch_size, self.linger_s, self.idle_s, self._stopping)
                if batch:
                    try:
                        self._hand_on(batch)
                    finally:
                        self._backlog.written(len(batch))
                if not stopping.is_set():  # after close(), the journal is the next start's
                    self._replay_when_due()
        finally:
            if not stopping.is_set():
                metrics.LEDGER_WRITER_UP.set(0)

    def _hand_on(self, batch: list[UsageRow]) -> None:
        """Write ``batch`` to the database, or to the journal while the database is away."""
        try:
            rows = [storable(r) for r in batch]
            with self._lock:
                self._in_flight, self._in_flight_since = rows, time.monotonic()
            try:
                left = rows if self.database.away() else self.database.insert(rows, dedupe=False)
            finally:
                with self._lock:
                    mine = self._in_flight is rows  # else close() journaled them meanwhile
                    self._in_flight = self._in_flight_since = None
            if left and mine:
                self._keep(left)
        except Exception:
            # Never the end of the writer: one bad batch must not stop every later row.
            log.exception("usage ledger: %d rows could not be written", len(batch))
            metrics.LEDGER_ROWS_DROPPED.inc(len(batch))

    def _keep(self, rows: list[dict[str, Any]]) -> None:
        """Put rows the database did not take in the journal; while neither takes them, try both
        again, until close() gives up on them."""
        pause = self.database.retry_s
        while True:
            try:
                self._journal(rows)
                return
            except JournalError as e:
                log.error("%s; trying again", e)
            if self._stopping.wait(pause):
                log.error(
                    "usage ledger: %d rows lost: neither the database nor the journal took them", len(rows)
                )
                metrics.LEDGER_ROWS_DROPPED.inc(len(rows))
                return
            rows = self.database.insert(rows, dedupe=True)  # a failed commit may have landed
            if not rows:
                return
            pause = min(pause * 2, self.database.retry_max_s)

    def _replay_when_due(self) -> None:
        """Between batches: replay the journal while the database answers. Rows this process
        journaled are replayed as soon as it does; the journal is looked at every ``idle_s`` for
        rows another worker or an earlier run left (and for the gauge)."""
        now = time.monotonic()
        look = now >= self._look_at
        if not look and not (self._journal_dirty and not self.database.away()):
            return
        if look:
            self._look_at = now + self.idle_s
        try:
            if not self.database.away():
                self.replay_journal(self.replay_budget_s)
            if look:
                metrics.LEDGER_JOURNAL_ROWS.set(self.journal.count())
        except JournalError as e:
            self._tell_journal_error(str(e))

    def replay_journal(self, budget_s: float) -> Replay:
        """Write what waits in the journal to the database, for ``budget_s`` at most (JournalError
        when the file cannot be read)."""
        done = self.journal.replay(lambda rows: not self.database.insert(rows, dedupe=True), budget_s)
        if done.emptied:
            self._journal_dirty = False
            metrics.LEDGER_JOURNAL_ROWS.set(0)
        if done.rows:
            log.warning(
                "usage ledger: %d rows replayed from the journal %s%s",
                done.rows,
                self.journal.path,
                "; it is empty" if done.emptied else "",
            )
        return done

    # -- ending --------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row is in the database or the journal; False if ``timeout``
        passed first."""
        return self._backlog.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued (waiting at most ``timeout``, default ``drain_timeout_s``), put what
        is left in the journal, stop the writer thread and close the connections. The log says
        what waits in the journal for the next start."""
        if self._thread is not None and self._pid == os.getpid():
            drain_s = self.drain_timeout_s if timeout is None else timeout
            drained = self.flush(drain_s)
            self._stopping.set()
            if not drained:
                self._journal_leftovers(drain_s)
            self._backlog.wake()
            self._thread.join(5)
            atexit.unregister(self.close)
            self._thread, self._pid = None, None
            self._say_what_waits()
        self.engine.dispose()
        self.journal.close()

    def _journal_leftovers(self, drain_s: float) -> None:
        """The drain time is up: the rows still queued, and the batch the writer holds (it may yet
        reach the database: a replay does not write it twice), go to the journal."""
        with self._lock:
            in_doubt, self._in_flight = list(self._in_flight or ()), None
        rows = [storable(row) for row in self._backlog.take_all()]
        if not rows and not in_doubt:
            return
        try:
            self._journal(rows)
            # The write in flight may still land: replayed only once it has surely settled.
            self._journal(in_doubt, in_doubt_s=self.in_doubt_s)
        except JournalError as e:
            log.error("usage ledger: %d rows not written at exit: %s", len(rows) + len(in_doubt), e)
            metrics.LEDGER_ROWS_DROPPED.inc(len(rows) + len(in_doubt))
            return
        rows += in_doubt
        log.error(
            "usage ledger: the database did not take %d rows within %g s of the stop; they are in "
            "the journal %s",
            len(rows),
            drain_s,
            self.journal.path,
        )

    def _say_what_waits(self) -> None:
        if not self._journaled:
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
                self._journaled,
            )

    # -- health --------------------------------------------------------------------------------

    def journal_rows(self) -> int | None:
        """Rows waiting in the journal for this ledger's database; None when it cannot be read."""
        try:
            return self.journal.count()
        except JournalError as e:
            self._tell_journal_error(str(e))
            return None

    def ping(self) -> bool:
        """Tell whether the database answers (and has the table)."""
        return self.database.ping()
