"""The ledger's database as its writer sees it: the table made ready, rows inserted (each once,
when they come back from the journal), and whether it is away."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from .. import metrics
from ..redact import without_credentials
from ..stores.health import StoreHealth
from .table import create_or_upgrade, display_url, engine_for, usage

log = logging.getLogger(__name__)


def _describe(e: BaseException) -> str:
    """An error's own first line, without the SQL and the values SQLAlchemy adds to it."""
    cause = getattr(e, "orig", None) or e
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return without_credentials(first)[:300]


class LedgerDatabase:
    """The database at ``url``. After a failure it counts as away for a pause that grows from
    ``retry_s`` to ``retry_max_s``; the writer sends it nothing meanwhile (``away``)."""

    retry_s, retry_max_s = 0.5, 5.0

    def __init__(self, url: str, while_away: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.health = StoreHealth("ledger", url)
        self._while_away = while_away  # what the log says happens to rows meanwhile
        self._pause_s = self.retry_s
        self._away_until = 0.0
        self._writes_fail = False  # the last write failed (readyz says so until one succeeds)
        # A database that is down at start-up does not stop the gateway: the writer keeps
        # trying, and /readyz says 503 until the table is there.
        self._schema_ready = self._prepare()

    def away(self) -> bool:
        """Whether the last try failed and the pause after it is not over."""
        return time.monotonic() < self._away_until

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
                "usage ledger %s is not reachable (%s): %s",
                display_url(self.url),
                self._while_away,
                _describe(e),
            )
            return False
        return True

    def insert(self, rows: list[dict[str, Any]], *, dedupe: bool) -> list[dict[str, Any]]:
        """Insert ``rows`` in one transaction; what is left when the database is away (all of
        them). A row the database refuses for what it holds is logged, counted and left out,
        alone. With ``dedupe`` (rows from the journal), a row already in the table (same request
        id and time: a writer that died between the database and the journal) is not written
        again."""
        try:
            if not self._schema_ready:
                self._schema_ready = self._prepare()
                if not self._schema_ready:
                    self._went_away(ConnectionError("the usage table cannot be reached"))
                    return rows
            with self.engine.begin() as conn:
                fresh = _not_yet_in(conn, rows) if dedupe else rows
                if fresh:
                    conn.execute(usage.insert(), fresh)
        except Exception as e:
            if not self._refused_for_its_values(e):
                self._went_away(e)
                return rows
            if len(rows) == 1:
                log.error(
                    "usage ledger: row of request %s cannot be stored and is left out (%s: %s)",
                    rows[0]["request_id"],
                    type(e).__name__,
                    _describe(e),
                )
                metrics.LEDGER_ROWS_DROPPED.inc()
                return []
            left: list[dict[str, Any]] = []
            for row in rows:  # find the row(s) at fault; the others are written
                left += [row] if self.away() else self.insert([row], dedupe=dedupe)
            return left
        self.health.answered()
        self._pause_s, self._away_until, self._writes_fail = self.retry_s, 0.0, False
        return []

    def _went_away(self, error: BaseException) -> None:
        """The database did not answer: batches go to the journal until the next look."""
        self._writes_fail = True
        self.health.failed(self._while_away, error)
        self._away_until = time.monotonic() + self._pause_s
        self._pause_s = min(self._pause_s * 2, self.retry_max_s)

    def _refused_for_its_values(self, e: Exception) -> bool:
        """Whether the database refused the values themselves, as opposed to being unreachable or
        busy: then writing the same rows again cannot help. Drivers raise many kinds of error for
        values they cannot bind; what tells is whether the table still answers a query."""
        if isinstance(e, OperationalError) or getattr(e, "connection_invalidated", False):
            return False
        if isinstance(e, DataError | IntegrityError):
            return True
        sqlstate = str(getattr(getattr(e, "orig", None), "sqlstate", None) or "")
        if sqlstate[:2] in _AWAY_CLASSES or sqlstate in _AWAY_STATES:
            return False  # read-only after a failover, no privilege, disk full: not the values
        try:
            with self.engine.connect() as conn:
                conn.execute(select(usage.c.id).limit(0))
        except SQLAlchemyError:
            self._schema_ready = False  # the table may be gone: created again before the retry
            return False
        return True

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
        if self._writes_fail:  # it answers a read, not the writer: rows go to the journal
            return False
        self.health.answered()
        return True


# PostgreSQL SQLSTATE classes and codes that say the database, not a row's values, refused a
# write: connection (08), transaction state (25: read-only), resources (53), operator
# intervention (57), system (58); no privilege (42501).
_AWAY_CLASSES = frozenset({"08", "25", "53", "57", "58"})
_AWAY_STATES = frozenset({"42501"})


def _not_yet_in(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` less those the table holds already (and repeats among them), by request id and
    time (looked up by time, which the table indexes)."""
    keys = {(row["request_id"], row["created_at"]) for row in rows}
    found = conn.execute(
        select(usage.c.request_id, usage.c.created_at).where(
            usage.c.created_at.in_({created_at for _, created_at in keys}),
            usage.c.request_id.in_({request_id for request_id, _ in keys}),
        )
    )
    seen = {(request_id, created_at) for request_id, created_at in found}
    fresh = []
    for row in rows:
        key = (row["request_id"], row["created_at"])
        if key not in seen:
            seen.add(key)
            fresh.append(row)
    return fresh
