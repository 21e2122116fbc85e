"""The usage table, as SQLAlchemy Core describes it, and the database that holds it (SQLite or
PostgreSQL): created, or given the columns a newer version records, on first write."""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    false,
    inspect,
    text,
)
from sqlalchemy.engine import Engine, make_url

from ..redact import without_credentials
from .row import UsageRow

log = logging.getLogger(__name__)

metadata = MetaData()
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("request_id", String(128), nullable=False),
    Column("created_at", DateTime, nullable=False, index=True),
    Column("api_key", String(256), nullable=False, index=True),
    Column("route", String(64), nullable=False),
    Column("model", String(256), index=True),
    Column("upstream_model", String(256)),
    Column("provider", String(64)),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64)),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("total_tokens", Integer, nullable=False),
    Column("images", Integer, nullable=False),
    Column("size", String(64)),
    Column("quality", String(64)),
    Column("n", Integer),
    Column("latency_ms", Float),
    Column("upstream_latency_ms", Float),
    Column("client_ip", String(64)),
    Column("pii_masked", Integer, nullable=False, server_default="0"),
    Column("guardrails_flagged", String(256)),
    Column("input_text_tokens", Integer),
    Column("input_image_tokens", Integer),
    Column("cost_usd", Float),
    Column("idempotent_replay", Boolean, nullable=False, server_default=false()),
    Column("input_cached_tokens", Integer),
    Column("search_units", Integer),
    Column("target", String(256)),
    Column("attempts", Integer),
    Column("input_cache_write_tokens", Integer),
)

_INT_RANGE = (-(2**31), 2**31 - 1)  # PostgreSQL's INTEGER


def storable(row: UsageRow) -> dict[str, Any]:
    """``row`` as the table can hold it, whatever a caller or an upstream put in it: text with
    its lone surrogates and NULs spelled out as escapes (neither UTF-8 nor PostgreSQL can hold
    them), cut to its column's length; integers within a 32-bit column."""
    values = dict(vars(row))  # flat: dataclasses.asdict costs 30 µs a row
    for name, length in _TEXT_COLUMNS:
        value = values[name]
        if isinstance(value, str):
            if not value.isascii():
                value = value.encode("utf-8", "backslashreplace").decode("utf-8")
            if "\x00" in value:
                value = value.replace("\x00", "\\x00")
            values[name] = value[:length]
    for name in _INT_COLUMNS:
        value = values[name]
        if isinstance(value, int) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            values[name] = max(_INT_RANGE[0], min(value, _INT_RANGE[1]))
    return values


_TEXT_COLUMNS = tuple((c.name, c.type.length) for c in usage.columns if isinstance(c.type, String))
_INT_COLUMNS = tuple(c.name for c in usage.columns if isinstance(c.type, Integer) and c.name != "id")


def engine_for(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its folder, WAL and a long busy timeout.

    ``postgresql://`` means psycopg 3 (SQLAlchemy's own default would be psycopg2).
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        # A database that does not answer at all holds the writer (and the rows it gathers
        # meanwhile) only this long before they go to the journal.
        # A connection that stops answering (no reset) is given up on after 10 s.
        connect_args: dict[str, Any] = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": 10_000,
        }
        connect_args = {k: v for k, v in connect_args.items() if k not in parsed.query}
        return create_engine(
            parsed, pool_pre_ping=True, pool_size=2, max_overflow=8, connect_args=connect_args
        )
    if parsed.database and parsed.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets every gunicorn worker write while others read; NORMAL is durable in WAL.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def ledger_name(url: str) -> str:
    """The database ``url`` names, as the journal tags its rows: its backend, host, port, database
    and search path (``options``), nothing else (no credentials; a new timeout or password does not
    make it another database); a SQLite file by its absolute path."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        return f"sqlite:///{os.path.abspath(database) if database not in ('', ':memory:') else database}"
    options = parsed.query.get("options")
    where = (
        f"{backend}://{parsed.host or ''}{f':{parsed.port}' if parsed.port else ''}/{parsed.database or ''}"
    )
    return f"{where}?options={options}" if isinstance(options, str) else where


def display_url(url: str) -> str:
    """``url`` as a log line or the CLI may show it: no password, no secret in its query."""
    parsed = make_url(url).difference_update_query(["password", "sslpassword", "passfile", "sslkey"])
    return without_credentials(parsed.render_as_string(hide_password=True))


def create_or_upgrade(engine: Engine) -> None:
    """Create the table, or add the columns a newer version records (never drop or change one;
    no index is added to a table that exists: on a large one that would hold every write)."""
    metadata.create_all(engine)
    present = {c["name"] for c in inspect(engine).get_columns(usage.name)}
    with engine.begin() as conn:
        for column in usage.columns:
            if column.name not in present:
                ddl = column.type.compile(engine.dialect)
                default = ""
                if column.server_default is not None:
                    server_default: Any = column.server_default
                    arg = server_default.arg  # a string, or an expression such as false()
                    default = (
                        f" DEFAULT {arg.compile(dialect=engine.dialect) if hasattr(arg, 'compile') else arg}"
                    )
                null = " NOT NULL" if default and not column.nullable else ""
                conn.execute(text(f"ALTER TABLE {usage.name} ADD COLUMN {column.name} {ddl}{null}{default}"))
                log.warning("usage ledger: added column %s", column.name)
