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
from .journal import Journal, Replay
from .journaling import Journaling
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
        self._journaling = Journaling(self.journal, self.database)

    # -- request threads -----------------------------------------------------------------------

    def record(self, row: UsageRow) -> None:
        """Queue ``row``; the caller does not wait for the database."""
        if not self._writer_alive():
            self._start_writer()
        since = self._in_flight_since
        if since is not None and time.monotonic() - since > self.stuck_s:
            self._journaling.overflow(row)  # the writer waits on a database that does not answer
        elif not self._backlog.put(row):  # a full queue
            self._journaling.overflow(row)

    # -- the writer thread ---------------------------------------------------------------------

    def start(self) -> None:
        """At a worker's start: rows an earlier run left in the journal are written to the
        database as soon as it answers. A journal file this version cannot read is set aside
        (logged), and the gateway serves."""
        if self._journaling.at_start():
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
                batch = self._backlog.next_batch(self.batch_size, self.linger_s, self.idle_s, self._pause)
                if batch:
                    try:
                        self._hand_on(batch)
                    finally:
                        self._backlog.written(len(batch))
                if not stopping.is_set():  # after close(), the journal is the next start's
                    self._journaling.replay_when_due(self.idle_s, self.replay_budget_s)
        finally:
            if not stopping.is_set():
                metrics.LEDGER_WRITER_UP.set(0)

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less when the ledger stops; True when it has (the event read as
        the pause starts: a writer started again after a stop has a new one)."""
        return self._stopping.wait(seconds)

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
                self._journaling.keep(left, self._pause)
        except Exception:
            # Never the end of the writer: one bad batch must not stop every later row.
            log.exception("usage ledger: %d rows could not be written", len(batch))
            metrics.LEDGER_ROWS_DROPPED.inc(len(batch))

    def replay_journal(self, budget_s: float) -> Replay:
        """Write what waits in the journal to the database, for ``budget_s`` at most (JournalError
        when the file cannot be read)."""
        return self._journaling.replay(budget_s)

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
            self._journaling.say_what_waits()
        self.engine.dispose()
        self.journal.close()

    def _journal_leftovers(self, drain_s: float) -> None:
        """The drain time is up: the rows still queued, and the batch the writer holds, go to the
        journal."""
        with self._lock:
            in_doubt, self._in_flight = list(self._in_flight or ()), None
        rows = [storable(row) for row in self._backlog.take_all()]
        self._journaling.leftovers(rows, in_doubt, self.in_doubt_s, drain_s)

    # -- health --------------------------------------------------------------------------------

    def journal_rows(self) -> int | None:
        """Rows waiting in the journal for this ledger's database; None when it cannot be read."""
        return self._journaling.rows()

    def ping(self) -> bool:
        """Tell whether the database answers (and has the table)."""
        return self.database.ping()
