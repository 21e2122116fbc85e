"""The usage ledger: one row per proxied request, written off the request thread (reading it:
``report``)."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time

from sqlalchemy import select, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from .. import metrics
from ..redact import without_credentials
from ..stores.health import StoreHealth
from .report import LedgerQueries
from .row import UsageRow
from .table import create_or_upgrade, engine_for, storable, usage

log = logging.getLogger(__name__)


def _describe(e: BaseException) -> str:
    """An error's own first line, without the SQL and the values SQLAlchemy adds to it."""
    cause = getattr(e, "orig", None) or e
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return without_credentials(first)[:300]


class Ledger(LedgerQueries):
    """Queues rows from request threads; one writer thread per process inserts them in batches."""

    batch_size = 500
    # After a batch's first row, wait this long for more. The writer then wakes a few times a
    # second instead of once per request: one insert for many rows costs far less CPU, and a
    # writer busy in Python for every row holds the GIL just when request threads come back
    # from I/O (the rate limiter's SQLite calls measured 4x slower beside a per-row writer).
    linger_s = 0.2
    drain_timeout_s = 30.0
    _WAITING = "usage rows wait in memory until it answers"

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.health = StoreHealth("ledger", url)
        # A database that is down at start-up does not stop the gateway: rows wait in memory,
        # the writer keeps trying, and /readyz says 503 until the table is there.
        self._schema_ready = self._prepare()
        self._lock = threading.Lock()
        self._queue: queue.Queue[UsageRow | None] = queue.Queue()
        # Rows queued and not yet written (or given up on), counted here rather than with the
        # queue's own task accounting, which gevent's patched queue does not have.
        self._unwritten = 0
        self._all_written = threading.Condition()
        self._pid: int | None = None  # the process whose writer thread runs
        self._engine_pid = os.getpid()  # the process whose connections the pool holds
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # set by close(): give up on rows that cannot be written

    def record(self, row: UsageRow) -> None:
        """Queue ``row``; the caller does not wait for the database."""
        if not self._writer_alive():
            self._start_writer()
        with self._all_written:
            self._unwritten += 1
        self._queue.put(row)

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
                self._queue = queue.Queue()
                self._unwritten, self._all_written = 0, threading.Condition()
                if self._engine_pid != os.getpid():
                    self.engine.dispose(close=False)
                    self._engine_pid = os.getpid()
                atexit.register(self.flush, self.drain_timeout_s)
            self._thread = threading.Thread(target=self._run, name="aisix-ledger", daemon=True)
            self._thread.start()
            metrics.LEDGER_WRITER_UP.set(1)
            self._pid = os.getpid()

    def _run(self) -> None:
        try:
            while self._write_next_batch():
                pass
        finally:
            if not self._stopping.is_set():
                metrics.LEDGER_WRITER_UP.set(0)

    def _write_next_batch(self) -> bool:
        """Take up to a batch of queued rows and write them; False when close() asked to stop."""
        q = self._queue
        batch = [q.get()]
        try:
            if batch[0] is not None and q.qsize() < self.batch_size - 1:
                # Sleep rather than wait on the queue: a waiting writer would be woken (a thread
                # switch and a turn at the GIL) by every row the request threads put.
                self._stopping.wait(self.linger_s)
            while len(batch) < self.batch_size and batch[-1] is not None:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            rows = [r for r in batch if r is not None]
            if rows:
                self._write(rows)
        except Exception:
            # Never the end of the writer: one bad batch must not stop every later row.
            log.exception("usage ledger: %d rows could not be written", len(batch))
            metrics.LEDGER_ROWS_DROPPED.inc(len(batch))
        finally:
            with self._all_written:
                self._unwritten -= sum(1 for r in batch if r is not None)
                if not self._unwritten:
                    self._all_written.notify_all()
        return batch[-1] is not None

    def _prepare(self) -> bool:
        """Create or upgrade the table; False (logged) while the database cannot be reached."""
        try:
            try:
                create_or_upgrade(self.engine)
            except SQLAlchemyError:
                # Several workers starting at once may race to create the table or a column;
                # the loser finds it done on the second look.
                time.sleep(0.2)
                create_or_upgrade(self.engine)
        except SQLAlchemyError as e:
            log.error(
                "usage ledger %s is not reachable (rows wait until it is): %s",
                without_credentials(self.url),
                _describe(e),
            )
            return False
        return True

    def _write(self, batch: list[UsageRow]) -> None:
        """Insert ``batch``, retrying while the database is away (a lost row is lost money); a
        row the database refuses for what it holds is logged, counted and left out, alone."""
        rows = [storable(r) for r in batch]
        delay = 0.05
        while True:
            try:
                if not self._schema_ready:
                    self._schema_ready = self._prepare()
                if self._schema_ready:
                    with self.engine.begin() as conn:
                        conn.execute(usage.insert(), rows)
                    self.health.answered()
                    return
                self.health.failed(self._WAITING, ConnectionError("the usage table cannot be reached"))
            except Exception as e:
                if not self._refused_for_its_values(e):
                    log.warning("usage ledger write of %d rows failed, retrying: %s", len(rows), _describe(e))
                    self.health.failed(self._WAITING, e)
                elif len(batch) > 1:
                    for row in batch:  # find the row(s) at fault; the others are written
                        self._write([row])
                    return
                else:
                    log.error(
                        "usage ledger: row of request %s cannot be stored and is left out (%s: %s)",
                        rows[0]["request_id"],
                        type(e).__name__,
                        _describe(e),
                    )
                    metrics.LEDGER_ROWS_DROPPED.inc()
                    return
            if self._stopping.wait(delay):
                log.error("usage ledger closed: %d rows were not written", len(rows))
                return
            delay = min(delay * 2, 5.0)

    def _refused_for_its_values(self, e: Exception) -> bool:
        """Whether the database refused the values themselves, as opposed to being unreachable or
        busy: then writing the same rows again cannot help. Drivers raise many kinds of error for
        values they cannot bind; what tells is whether the table still answers a query."""
        if isinstance(e, OperationalError) or getattr(e, "connection_invalidated", False):
            return False
        if isinstance(e, DataError | IntegrityError):
            return True
        try:
            with self.engine.connect() as conn:
                conn.execute(select(usage.c.id).limit(0))
        except SQLAlchemyError:
            self._schema_ready = False  # the table may be gone: created again before the retry
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row is written; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._all_written:
            while self._unwritten:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    log.error("usage ledger: %d rows not written at exit", self._unwritten)
                    return False
                self._all_written.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued (waiting at most ``timeout``, default ``drain_timeout_s``), stop
        the writer thread and close the connections."""
        if self._thread is not None and self._pid == os.getpid():
            self.flush(self.drain_timeout_s if timeout is None else timeout)
            self._stopping.set()
            self._queue.put(None)
            self._thread.join(5)
            atexit.unregister(self.flush)
            self._thread, self._pid = None, None
            self._stopping.clear()
        self.engine.dispose()

    def ping(self) -> bool:
        """Tell whether the database answers (and has the table)."""
        if not self._schema_ready:
            self._schema_ready = self._prepare()
            if not self._schema_ready:
                self.health.failed("/readyz", ConnectionError("the usage table cannot be reached"))
                return False
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as e:
            self.health.failed("/readyz", e)
            return False
        self.health.answered()
        return True
