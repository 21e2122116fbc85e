"""What every worker and host knows of a routing model's targets, beside the rate-limit counters:
the same SQLite file for one host, the same Redis for several.

Per target (a direct model alias): until when it is skipped after a failure, how many calls it has
in flight, the moving average of its latency, and its failures since it last answered. A call in
flight holds a slot the limiter takes with the target's own limits (``flight_key``), in the same
turn at the store, and gives back with them; it expires as theirs do, so a worker that dies
mid-call does not count as busy for ever. The rest is recorded here. A cooldown is kept on the
store's clock: Redis's own time, shared by every host.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import redis
from limits.storage import RedisStorage

from .redis import SLOT_PREFIX
from .sqlite import SQLiteStorage

LATENCY_WEIGHT = 0.3  # of a new figure in the moving average
KEEP_S = 7 * 86400  # a target nobody routes to is forgotten after this long


FLIGHT_PREFIX = "target:"


def flight_key(target: str) -> str:
    """Where the limiter keeps the slots of ``target``'s calls in flight."""
    return FLIGHT_PREFIX + target


class TargetFigures(NamedTuple):
    """One target as the store has it."""

    cooling_s: float = 0.0  # how long it is still skipped (0: it is not)
    in_flight: int = 0
    latency_ms: float | None = None  # moving average; None: it has not answered yet
    failures: int = 0  # since it last answered
    failed_s_ago: float | None = None  # since its last failure (None: none)


class Ending(NamedTuple):
    """How calls to a target ended: answered (their mean latency, a stream's to its first event,
    over ``samples`` calls), or failed, cooling it for ``cool_s`` (0: it does not cool)."""

    latency_ms: float | None = None
    failed: bool = False
    cool_s: float = 0.0
    samples: int = 1
    answered_s_ago: float = 0.0  # when the last of them answered (a failure since then counts)

    @property
    def weight(self) -> float:
        """The latency's weight in the moving average: as much as ``samples`` figures one by one."""
        return 1 - (1 - LATENCY_WEIGHT) ** self.samples


class RoutingStore(Protocol):
    """``SQLiteRouting`` or ``RedisRouting``."""

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        """Each target's figures (one never seen may be left out)."""

    def record(self, target: str, ending: Ending) -> None:
        """Calls to ``target`` ended so."""


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS routing_targets (target TEXT PRIMARY KEY,"
    " cool_until REAL NOT NULL DEFAULT 0, latency_ms REAL, failures INTEGER NOT NULL DEFAULT 0,"
    " failed_at REAL, used_at REAL NOT NULL DEFAULT 0) WITHOUT ROWID"
)
_SQLITE_RECORD = """
INSERT INTO routing_targets (target, cool_until, latency_ms, failures, failed_at, used_at)
VALUES (:target, :cool_until, :latency, :failed, CASE WHEN :failed THEN :now END, :now)
ON CONFLICT (target) DO UPDATE SET
  cool_until = max(cool_until, excluded.cool_until),
  latency_ms = CASE WHEN :latency IS NULL THEN latency_ms WHEN latency_ms IS NULL THEN :latency
               ELSE latency_ms + :weight * (:latency - latency_ms) END,
  failures = CASE WHEN :failed THEN failures + 1
             WHEN :answered_at >= coalesce(failed_at, 0) THEN 0 ELSE failures END,
  failed_at = CASE WHEN :failed THEN :now ELSE failed_at END,
  used_at = :now
"""


class SQLiteRouting:
    """Target figures in the limiter's SQLite file: a row per target; calls in flight are counted
    by the limiter's ``slots_taken``."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self._next_sweep = 0.0
        with storage.transaction() as db:
            db.execute(_SQLITE_SCHEMA)

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        now = time.time()
        # Every target once, with its row if it has one and its slots if it holds any.
        rows = self._storage.read(
            "SELECT t.target, r.cool_until, r.latency_ms, r.failures, r.failed_at, s.taken"
            " FROM (SELECT value AS target FROM json_each(?)) t"
            " LEFT JOIN routing_targets r ON r.target = t.target"
            " LEFT JOIN slots_taken s ON s.key = ? || t.target",
            (json.dumps(list(targets)), FLIGHT_PREFIX),
        )
        return {
            target: TargetFigures(
                max(0.0, (cool_until or 0.0) - now),
                max(0, taken or 0),
                latency,
                failures or 0,
                None if failed_at is None else max(0.0, now - failed_at),
            )
            for target, cool_until, latency, failures, failed_at, taken in rows
        }

    def record(self, target: str, ending: Ending) -> None:
        now = time.time()
        with self._storage.transaction() as db:
            db.execute(
                _SQLITE_RECORD,
                {
                    "target": target,
                    "cool_until": now + ending.cool_s if ending.cool_s else 0.0,
                    "latency": ending.latency_ms,
                    "failed": ending.failed,
                    "now": now,
                    "answered_at": now - ending.answered_s_ago,
                    "weight": ending.weight,
                },
            )
            if now >= self._next_sweep:  # targets nobody routes to any more, now and then
                self._next_sweep = now + 3600
                db.execute("DELETE FROM routing_targets WHERE used_at < ?", (now - KEEP_S,))


ROUTING_PREFIX = "aisix:routing:"
_REDIS_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: per target its figures (a hash) and its in-flight slots (the limiter's sorted set, scored
# by expiry in ms). Per target: cooling ms, in flight, latency, failures, ms since its last failure
# (-1: none).
_REDIS_FIGURES = (
    _REDIS_NOW
    + """
local out = {}
for i = 1, #KEYS, 2 do
  local f = redis.call('HMGET', KEYS[i], 'cool_until', 'latency_ms', 'failures', 'failed_at')
  local failed_at = tonumber(f[4])
  table.insert(out, math.max(0, (tonumber(f[1]) or 0) - now))
  table.insert(out, redis.call('ZCOUNT', KEYS[i + 1], '(' .. now, '+inf'))
  table.insert(out, f[2] or '')
  table.insert(out, tonumber(f[3]) or 0)
  table.insert(out, failed_at and math.max(0, now - failed_at) or -1)
end
return out
"""
)
# KEYS: the figures; ARGV: latency ms ('' none), failed (0/1), cooldown ms, the latency's weight,
# how long to keep the figures (ms), how long ago the last answer came (ms).
_REDIS_RECORD = (
    _REDIS_NOW
    + """
if ARGV[1] ~= '' then
  local latency, before = tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[1], 'latency_ms'))
  if before then latency = before + tonumber(ARGV[4]) * (latency - before) end
  redis.call('HSET', KEYS[1], 'latency_ms', tostring(latency))
end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HSET', KEYS[1], 'failed_at', now)
elseif now - tonumber(ARGV[6]) >= (tonumber(redis.call('HGET', KEYS[1], 'failed_at')) or 0) then
  redis.call('HSET', KEYS[1], 'failures', 0)
end
local cool = tonumber(ARGV[3])
if cool > 0 and now + cool > (tonumber(redis.call('HGET', KEYS[1], 'cool_until')) or 0) then
  redis.call('HSET', KEYS[1], 'cool_until', now + cool)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
"""
)


class RedisRouting:
    """Target figures in Redis, shared by every host: a hash per target; each read or write one
    script."""

    def __init__(self, connection: redis.Redis) -> None:
        self._figures = connection.register_script(_REDIS_FIGURES)
        self._record = connection.register_script(_REDIS_RECORD)

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        keys = [k for target in targets for k in (ROUTING_PREFIX + target, SLOT_PREFIX + flight_key(target))]
        values = self._figures(keys=keys)
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

    def record(self, target: str, ending: Ending) -> None:
        self._record(
            keys=[ROUTING_PREFIX + target],
            args=[
                "" if ending.latency_ms is None else repr(ending.latency_ms),
                int(ending.failed),
                round(ending.cool_s * 1000),
                ending.weight,
                KEEP_S * 1000,
                round(ending.answered_s_ago * 1000),
            ],
        )


class MemoryRouting:
    """One worker's own figures: what it has seen itself (for when the shared store cannot
    answer), its calls in flight included."""

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

    def ended(self, target: str, slot: str, ending: Ending) -> None:
        now = time.monotonic()
        with self._lock:
            figures = self._of(target)
            figures.slots.pop(slot, None)
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
            self.latency_ms = latency if before is None else before + ending.weight * (latency - before)
        if ending.failed:
            self.failures, self.failed_at = self.failures + 1, now
        else:
            self.failures = 0
        self.cool_until = max(self.cool_until, now + ending.cool_s if ending.cool_s else 0.0)


def routing_store_for(limit_storage: Any) -> RoutingStore:
    """The target figures beside the rate-limit counters: the same SQLite file or Redis."""
    if isinstance(limit_storage, RedisStorage):
        return RedisRouting(cast(redis.Redis, limit_storage.get_connection()))
    return SQLiteRouting(limit_storage)
