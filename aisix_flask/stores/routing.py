"""What every worker and host knows of a routing model's targets, beside the rate-limit counters:
the same SQLite file for one host, the same Redis for several.

Per target (a direct model alias): until when it is skipped after a failure, how many calls it has
in flight, the moving average of its latency, and its failures since it last answered. A call in
flight is a slot that expires (as the limiter's concurrency slots do), so a worker that dies
mid-call does not count as busy for ever. A cooldown is kept on the store's clock: Redis's own
time, shared by every host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import redis
from limits.storage import RedisStorage

from .sqlite import SQLiteStorage

LATENCY_WEIGHT = 0.3  # of a new figure in the moving average
KEEP_S = 7 * 86400  # a target nobody routes to is forgotten after this long


class TargetFigures(NamedTuple):
    """One target as the store has it."""

    cooling_s: float = 0.0  # how long it is still skipped (0: it is not)
    in_flight: int = 0
    latency_ms: float | None = None  # moving average; None: it has not answered yet
    failures: int = 0  # since it last answered
    failed_s_ago: float | None = None  # since its last failure (None: none)


class Ending(NamedTuple):
    """How a call to a target ended: its latency when it answered (a stream: to its first event),
    and whether it failed, and if so for how long it cools (0: it does not)."""

    latency_ms: float | None = None
    failed: bool = False
    cool_s: float = 0.0


class RoutingStore(Protocol):
    """``SQLiteRouting`` or ``RedisRouting``."""

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        """Each target's figures (one never seen gets the defaults)."""

    def started(self, target: str, slot: str, ttl_s: float) -> None:
        """A call to ``target`` is in flight, holding ``slot`` for at most ``ttl_s``."""

    def renew(self, target: str, slot: str, ttl_s: float) -> None:
        """The call holding ``slot`` is still running: ``ttl_s`` more from now."""

    def ended(self, target: str, slot: str | None, ending: Ending) -> None:
        """A call to ``target`` ended (``slot``: its in-flight slot, if it took one)."""


class MemoryRouting:
    """One worker's own figures: what it has seen itself (when the shared store cannot answer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._figures: dict[str, _Figures] = {}

    def _of(self, target: str) -> _Figures:
        figures = self._figures.get(target)
        if figures is None:
            figures = self._figures[target] = _Figures()
        return figures

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        now = time.monotonic()
        with self._lock:
            return {target: self._of(target).seen(now) for target in targets}

    def started(self, target: str, slot: str, ttl_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            slots = self._of(target).slots
            if len(slots) >= 1024:  # calls that never ended (they always should): dropped once past
                for gone in [s for s, expiry in slots.items() if expiry <= now]:
                    del slots[gone]
            slots[slot] = now + ttl_s

    def renew(self, target: str, slot: str, ttl_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            slots = self._of(target).slots
            if slots.get(slot, 0.0) > now:
                slots[slot] = now + ttl_s

    def ended(self, target: str, slot: str | None, ending: Ending) -> None:
        now = time.monotonic()
        with self._lock:
            figures = self._of(target)
            figures.slots.pop(slot or "", None)
            figures.end(ending, now)


@dataclass
class _Figures:
    cool_until: float = 0.0  # time.monotonic()
    latency_ms: float | None = None
    failures: int = 0
    failed_at: float | None = None
    slots: dict[str, float] = field(default_factory=dict)  # slot id → expiry

    def seen(self, now: float) -> TargetFigures:
        in_flight = sum(1 for expiry in self.slots.values() if expiry > now)
        failed_ago = None if self.failed_at is None else now - self.failed_at
        return TargetFigures(
            max(0.0, self.cool_until - now), in_flight, self.latency_ms, self.failures, failed_ago
        )

    def end(self, ending: Ending, now: float) -> None:
        latency = ending.latency_ms
        if latency is not None:
            before = self.latency_ms
            self.latency_ms = latency if before is None else before + LATENCY_WEIGHT * (latency - before)
        if ending.failed:
            self.failures, self.failed_at = self.failures + 1, now
        else:
            self.failures = 0
        self.cool_until = max(self.cool_until, now + ending.cool_s if ending.cool_s else 0.0)


def _flight_key(target: str) -> str:
    return f"target:{target}"


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS routing_targets (target TEXT PRIMARY KEY,"
    " cool_until REAL NOT NULL DEFAULT 0, latency_ms REAL, failures INTEGER NOT NULL DEFAULT 0,"
    " failed_at REAL, used_at REAL NOT NULL DEFAULT 0) WITHOUT ROWID"
)
# A call's end: its slot given back, and the target's figures, in one statement each.
_SQLITE_END = """
INSERT INTO routing_targets (target, cool_until, latency_ms, failures, failed_at, used_at)
VALUES (:target, :cool_until, :latency, :failed, CASE WHEN :failed THEN :now END, :now)
ON CONFLICT (target) DO UPDATE SET
  cool_until = max(cool_until, excluded.cool_until),
  latency_ms = CASE WHEN :latency IS NULL THEN latency_ms WHEN latency_ms IS NULL THEN :latency
               ELSE latency_ms + :weight * (:latency - latency_ms) END,
  failures = CASE WHEN :failed THEN failures + 1 ELSE 0 END,
  failed_at = CASE WHEN :failed THEN :now ELSE failed_at END,
  used_at = :now
"""


class SQLiteRouting:
    """Target figures in the limiter's SQLite file: calls in flight are rows of its ``slots``
    table (counted by its ``slots_taken``), the rest a row per target."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self._next_sweep = 0.0
        with storage.transaction() as db:
            db.execute(_SQLITE_SCHEMA)

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        marks = ", ".join("?" * len(targets))
        now = time.time()
        rows = self._storage.read(
            "SELECT t.target, t.cool_until, t.latency_ms, t.failures, t.failed_at,"
            " (SELECT taken FROM slots_taken WHERE key = 'target:' || t.target)"
            f" FROM routing_targets t WHERE t.target IN ({marks})",
            tuple(targets),
        )
        return {
            target: TargetFigures(
                max(0.0, cool_until - now),
                max(0, taken or 0),
                latency,
                failures,
                None if failed_at is None else max(0.0, now - failed_at),
            )
            for target, cool_until, latency, failures, failed_at, taken in rows
        }

    def started(self, target: str, slot: str, ttl_s: float) -> None:
        now = time.time()
        with self._storage.transaction() as db:
            if now >= self._next_sweep:
                self._sweep(db, now)
            db.execute("INSERT OR IGNORE INTO routing_targets (target, used_at) VALUES (?, ?)", (target, now))
            db.execute("INSERT INTO slots VALUES (?, ?, ?)", (_flight_key(target), slot, now + ttl_s))

    def renew(self, target: str, slot: str, ttl_s: float) -> None:
        now = time.time()
        with self._storage.transaction() as db:
            db.execute(
                "UPDATE slots SET expires_at = ? WHERE key = ? AND id = ? AND expires_at > ?",
                (now + ttl_s, _flight_key(target), slot, now),
            )

    def ended(self, target: str, slot: str | None, ending: Ending) -> None:
        now = time.time()
        with self._storage.transaction() as db:
            if slot is not None:
                db.execute("DELETE FROM slots WHERE key = ? AND id = ?", (_flight_key(target), slot))
            db.execute(
                _SQLITE_END,
                {
                    "target": target,
                    "cool_until": now + ending.cool_s if ending.cool_s else 0.0,
                    "latency": ending.latency_ms,
                    "failed": ending.failed,
                    "now": now,
                    "weight": LATENCY_WEIGHT,
                },
            )

    def _sweep(self, db: Any, now: float) -> None:
        """About once a second: the slots of calls whose worker died, and targets nobody routes to."""
        self._next_sweep = now + 1.0
        db.execute("DELETE FROM slots WHERE key >= 'target:' AND key < 'target;' AND expires_at <= ?", (now,))
        db.execute("DELETE FROM routing_targets WHERE used_at < ?", (now - KEEP_S,))


ROUTING_PREFIX = "aisix:routing:"
_REDIS_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: per target its figures (a hash) and its slots (a sorted set scored by expiry, ms).
# Per target: cooling ms, in flight, latency, failures, ms since its last failure (-1: none).
_REDIS_FIGURES = (
    _REDIS_NOW
    + """
local out = {}
for i = 1, #KEYS, 2 do
  local f = redis.call('HMGET', KEYS[i], 'cool_until', 'latency_ms', 'failures', 'failed_at')
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', now)
  local failed_at = tonumber(f[4])
  table.insert(out, math.max(0, (tonumber(f[1]) or 0) - now))
  table.insert(out, redis.call('ZCARD', KEYS[i + 1]))
  table.insert(out, f[2] or '')
  table.insert(out, tonumber(f[3]) or 0)
  table.insert(out, failed_at and math.max(0, now - failed_at) or -1)
end
return out
"""
)
# KEYS: the slots; ARGV: the slot id, its TTL (ms), and '1' to renew a slot (one already given
# back, or expired and swept, is not taken again).
_REDIS_LEASE = (
    _REDIS_NOW
    + """
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then
  if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
else
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
)
# KEYS: the figures, the slots; ARGV: the slot id ('' none), latency ms ('' none), failed (0/1),
# cooldown ms, the moving average's weight, how long to keep the figures (ms).
_REDIS_END = (
    _REDIS_NOW
    + """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[2] ~= '' then
  local latency, before = tonumber(ARGV[2]), tonumber(redis.call('HGET', KEYS[1], 'latency_ms'))
  if before then latency = before + tonumber(ARGV[5]) * (latency - before) end
  redis.call('HSET', KEYS[1], 'latency_ms', tostring(latency))
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HSET', KEYS[1], 'failed_at', now)
else
  redis.call('HSET', KEYS[1], 'failures', 0)
end
local cool = tonumber(ARGV[4])
if cool > 0 and now + cool > (tonumber(redis.call('HGET', KEYS[1], 'cool_until')) or 0) then
  redis.call('HSET', KEYS[1], 'cool_until', now + cool)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
"""
)


class RedisRouting:
    """Target figures in Redis, shared by every host: a hash and a sorted set of in-flight slots
    per target; each read or write one script."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._figures = connection.register_script(_REDIS_FIGURES)
        self._lease = connection.register_script(_REDIS_LEASE)
        self._end = connection.register_script(_REDIS_END)

    @staticmethod
    def _keys(target: str) -> list[str]:
        return [f"{ROUTING_PREFIX}{target}", f"{ROUTING_PREFIX}{target}:in-flight"]

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        values = self._figures(keys=[k for target in targets for k in self._keys(target)])
        found = {}
        for i, target in enumerate(targets):
            cooling_ms, in_flight, latency, failures, failed_ms_ago = values[5 * i : 5 * i + 5]
            found[target] = TargetFigures(
                int(cooling_ms) / 1000,
                int(in_flight),
                float(latency) if latency else None,
                int(failures),
                None if int(failed_ms_ago) < 0 else int(failed_ms_ago) / 1000,
            )
        return found

    def started(self, target: str, slot: str, ttl_s: float) -> None:
        self._lease(keys=self._keys(target)[1:], args=[slot, round(ttl_s * 1000), 0])

    def renew(self, target: str, slot: str, ttl_s: float) -> None:
        self._lease(keys=self._keys(target)[1:], args=[slot, round(ttl_s * 1000), 1])

    def ended(self, target: str, slot: str | None, ending: Ending) -> None:
        self._end(
            keys=self._keys(target),
            args=[
                slot or "",
                "" if ending.latency_ms is None else repr(ending.latency_ms),
                int(ending.failed),
                round(ending.cool_s * 1000),
                LATENCY_WEIGHT,
                KEEP_S * 1000,
            ],
        )


def routing_store_for(limit_storage: Any) -> RoutingStore:
    """The target figures beside the rate-limit counters: the same SQLite file or Redis."""
    if isinstance(limit_storage, RedisStorage):
        return RedisRouting(cast(redis.Redis, limit_storage.get_connection()))
    return SQLiteRouting(limit_storage)
