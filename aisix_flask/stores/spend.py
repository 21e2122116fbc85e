"""What keys and models have spent, beside the rate-limit counters: the same SQLite file for one
host, the same Redis for several; kept across restarts.

A counter is one (key or model, period) pair, e.g. ``key:dev:d2026-11-25``, in whole nano-dollars
(1e-9 USD): sums of floats would drift (0.1 + 0.1 + 0.1 > 0.3), and a limit compared with them
would refuse what fits. A counter expires a week after its period ends. ``reserve`` checks and adds
in one step for every counter of a request (all or nothing), ``add`` counts what a request cost.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple, Protocol, cast

import redis
from limits.storage import RedisStorage

from .sqlite import SQLiteStorage

log = logging.getLogger(__name__)

KEEP_AFTER_PERIOD_S = 7 * 86400.0
NANOS_PER_USD = 1_000_000_000


def nanos(usd: float) -> int:
    """USD as whole nano-dollars."""
    return round(usd * NANOS_PER_USD)


class Charge(NamedTuple):
    """A counter, its limit, what to add to it (nano-dollars), and when its period ends (None:
    never; the limit is None for a counter without a budget)."""

    key: str
    limit: int | None
    amount: int
    period_end: float | None


class SpendStore(Protocol):
    """``SQLiteSpend`` or ``RedisSpend``."""

    def reserve(self, charges: list[Charge]) -> int | None:
        """Add every charge, unless one would pass its limit: then nothing, and its index.

        A charge of 0 (a price known only afterwards) passes while the counter is below its limit;
        one of more passes while the counter plus it stays within the limit."""

    def add(self, charges: list[Charge]) -> None:
        """Add to the counters (what a request cost, less what was reserved; may be negative)."""

    def spent(self, keys: list[str]) -> dict[str, int]:
        """The counters' values (a counter that does not exist is left out)."""


def refused(held: int, charge: Charge) -> bool:
    """Whether ``charge`` would pass its limit on a counter at ``held``."""
    if charge.limit is None:
        return False
    if charge.amount > 0:
        return held + charge.amount > charge.limit
    return held >= charge.limit


def _expires_at(period_end: float | None) -> float:
    return float("inf") if period_end is None else period_end + KEEP_AFTER_PERIOD_S


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spend_nanos"
    " (key TEXT PRIMARY KEY, nanos INTEGER NOT NULL, expires_at REAL NOT NULL)"
)
_SQLITE_ADD = (
    "INSERT INTO spend_nanos VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET nanos = nanos + excluded.nanos"
)


def _live(keys: list[str]) -> tuple[str, tuple[Any, ...]]:
    """The query (and its arguments) for the values of the counters ``keys`` that have not expired."""
    marks = ", ".join("?" * len(keys))
    return f"SELECT key, nanos FROM spend_nanos WHERE key IN ({marks}) AND expires_at > ?", (
        *keys,
        time.time(),
    )


class SQLiteSpend:
    """Spend counters in the limiter's SQLite file: a reservation or a count is one transaction."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self._next_sweep = 0.0
        with storage.transaction() as db:
            db.execute(_SQLITE_SCHEMA)
            _upgrade_sqlite(db)

    def reserve(self, charges: list[Charge]) -> int | None:
        with self._storage.transaction() as db:
            held = self._values(db, [c.key for c in charges])
            for i, charge in enumerate(charges):
                if refused(held.get(charge.key, 0), charge):
                    return i
            self._add(db, charges)
        return None

    def add(self, charges: list[Charge]) -> None:
        with self._storage.transaction() as db:
            self._add(db, charges)

    def spent(self, keys: list[str]) -> dict[str, int]:
        return dict(self._storage.read(*_live(keys))) if keys else {}

    @staticmethod
    def _values(db: Any, keys: list[str]) -> dict[str, int]:
        return dict(db.execute(*_live(keys)))

    def _add(self, db: Any, charges: list[Charge]) -> None:
        # A counter's key names its period, so nothing adds to one after it expires: expired ones
        # are only dropped, about once a minute.
        db.executemany(
            _SQLITE_ADD, [(c.key, c.amount, _expires_at(c.period_end)) for c in charges if c.amount]
        )
        now = time.time()
        if now >= self._next_sweep:
            self._next_sweep = now + 60
            db.execute("DELETE FROM spend_nanos WHERE expires_at <= ?", (now,))


def _upgrade_sqlite(db: Any) -> None:
    """Counters from before nano-dollars (USD as floats, table ``spend``) carried over, once."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spend'").fetchone():
        db.execute(
            "INSERT INTO spend_nanos SELECT key, CAST(round(usd * 1e9) AS INTEGER), expires_at FROM spend"
            " WHERE true ON CONFLICT(key) DO UPDATE SET nanos = nanos + excluded.nanos"
        )
        db.execute("DROP TABLE spend")


# KEYS: the counters; ARGV: per counter its limit (-1: none), amount and expiry (unix s, 0: never).
_REDIS_RESERVE = """
for i, key in ipairs(KEYS) do
  local held = tonumber(redis.call('GET', key) or '0')
  local limit, amount = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  if limit >= 0 and ((amount > 0 and held + amount > limit) or (amount <= 0 and held >= limit)) then
    return i
  end
end
for i, key in ipairs(KEYS) do
  local amount = tonumber(ARGV[3 * i - 1])
  if amount ~= 0 then
    redis.call('INCRBY', key, amount)
    if tonumber(ARGV[3 * i]) > 0 then redis.call('EXPIREAT', key, ARGV[3 * i]) end
  end
end
return 0
"""
SPEND_PREFIX = "aisix:spend:"
# The first version with budgets kept USD as floats (INCRBYFLOAT) under the same names; its
# counters are converted in place when a gateway starts, once per Redis (the mark says it is done).
# A float counter is told by its decimal point or exponent: INCRBY never writes either. (One that
# INCRBYFLOAT left at a whole number of dollars cannot be told apart, and is read as nano-dollars.)
_CONVERTED_MARK = "aisix:spend-nano-dollars"
# KEYS: a counter. Its USD as nano-dollars, its expiry kept; a counter in nano-dollars is left.
_REDIS_UPGRADE = """
local value = redis.call('GET', KEYS[1])
if not value or not string.find(value, '[.eE]') then return 0 end
local usd = tonumber(value)
if not usd then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('SET', KEYS[1], string.format('%d', math.floor(usd * 1e9 + 0.5)))
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


class RedisSpend:
    """Spend counters in Redis (INCRBY), shared by every host on the server; a reservation is one
    script, a count one pipeline."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._reserve = connection.register_script(_REDIS_RESERVE)
        try:
            if not connection.exists(_CONVERTED_MARK):
                self._convert_float_counters()
        except redis.RedisError as e:
            log.error("budget store: counters of an older version not converted yet: %s", e)

    def _convert_float_counters(self) -> None:
        upgrade = self._redis.register_script(_REDIS_UPGRADE)
        failed = 0
        for key in self._redis.scan_iter(match=SPEND_PREFIX + "*", count=1000):
            try:
                upgrade(keys=[key])
            except redis.ResponseError as e:  # this counter only: the others are still converted
                failed += 1
                log.error("budget store: counter %r not converted: %s", key, e)
        if not failed:
            self._redis.set(_CONVERTED_MARK, 1)

    def reserve(self, charges: list[Charge]) -> int | None:
        args: list[Any] = []
        for c in charges:
            args += [
                -1 if c.limit is None else c.limit,
                c.amount,
                int(_expires_at(c.period_end)) if c.period_end else 0,
            ]
        refused_at = self._reserve(keys=[SPEND_PREFIX + c.key for c in charges], args=args)
        return int(refused_at) - 1 if refused_at else None

    def add(self, charges: list[Charge]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for charge in charges:
                if charge.amount:
                    pipe.incrby(SPEND_PREFIX + charge.key, charge.amount)
                    if charge.period_end is not None:
                        pipe.expireat(SPEND_PREFIX + charge.key, int(_expires_at(charge.period_end)))
            pipe.execute()

    def spent(self, keys: list[str]) -> dict[str, int]:
        if not keys:
            return {}
        values = self._redis.mget([SPEND_PREFIX + key for key in keys])
        return {key: int(value) for key, value in zip(keys, values, strict=True) if value is not None}


def spend_store_for(limit_storage: Any) -> SpendStore:
    """The spend counters beside the rate-limit counters: the same SQLite file or Redis."""
    if isinstance(limit_storage, RedisStorage):
        return RedisSpend(cast(redis.Redis, limit_storage.get_connection()))
    return SQLiteSpend(limit_storage)
