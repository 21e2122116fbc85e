"""The Redis admission store: rate-limit windows and concurrency slots shared by every host on one server.

Rate-limit windows are kept in ``limits``' own layout (its RedisStorage reads them); an admission
and a request's end are one script each.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import redis
from limits.storage import RedisStorage

from .admissions import Admitted, Checks, Hits, Slots
from .windows import Window

SLOT_PREFIX = "aisix:slots:"


# The windows in limits' own layout (its RedisStorage reads them: "LIMITS:{key}" is the current
# window, "LIMITS:{key}/-1" the previous one, with the same roll-over), so these scripts and
# limits' agree on every count. Slots are a sorted set scored by expiry. The Redis server's clock
# decides, so hosts may drift.
_REDIS_WINDOWS = """
local function roll(previous, current, expiry)
  local ttl = tonumber(redis.call('PTTL', current))
  if ttl > 0 and ttl < expiry then  -- the current window has ended: it is now the previous one
    redis.call('RENAME', current, previous)
    redis.call('SET', current, 0, 'PX', ttl + expiry)
  end
end
local function add(current, expiry, amount)
  if redis.call('EXISTS', current) == 1 then
    redis.call('INCRBY', current, amount)
  else
    redis.call('SET', current, amount, 'PX', expiry * 2)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: the slot sets, then each window's previous and current counter. ARGV: the number of
# slots and of windows; per slot its limit, TTL (ms) and id; per window its expiry (s), limit and
# whether the request counts in it (1) or is only checked against it (0, token windows).
_REDIS_ADMIT = (
    _REDIS_WINDOWS
    + """
local slots, windows = tonumber(ARGV[1]), tonumber(ARGV[2])
local seen = {'ok'}
for i = 1, slots do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 * i]) then return {'slot', i - 1} end
end
for j = 1, windows do
  local a, previous, current = 3 * (slots + j), KEYS[slots + 2 * j - 1], KEYS[slots + 2 * j]
  local expiry = tonumber(ARGV[a]) * 1000
  roll(previous, current, expiry)
  local pc = tonumber(redis.call('GET', previous)) or 0
  local pt = math.max(tonumber(redis.call('PTTL', previous)), 0)
  local cc = tonumber(redis.call('GET', current)) or 0
  local ct = math.max(tonumber(redis.call('PTTL', current)), 0)
  if math.floor(pc * pt / expiry) + cc + 1 > tonumber(ARGV[a + 1]) then
    return {'window', j - 1, pc, pt, cc, ct}
  end
  table.insert(seen, pc); table.insert(seen, pt); table.insert(seen, cc); table.insert(seen, ct)
end
for i = 1, slots do
  local ttl = tonumber(ARGV[3 * i + 1])
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[3 * i + 2])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
for j = 1, windows do
  local a = 3 * (slots + j)
  if ARGV[a + 2] == '1' then add(KEYS[slots + 2 * j], tonumber(ARGV[a]) * 1000, 1) end
end
return seen
"""
)
# KEYS: the slot sets, then each window's previous and current counter. ARGV: the number of
# slots; each slot's id; each window's expiry (s) and the amount to add.
_REDIS_FINISH_ADMISSION = (
    _REDIS_WINDOWS
    + """
local slots = tonumber(ARGV[1])
for i = 1, slots do redis.call('ZREM', KEYS[i], ARGV[1 + i]) end
for j = 1, (#KEYS - slots) / 2 do
  local a, previous, current = 2 * j + slots, KEYS[slots + 2 * j - 1], KEYS[slots + 2 * j]
  local expiry = tonumber(ARGV[a]) * 1000
  roll(previous, current, expiry)
  add(current, expiry, tonumber(ARGV[a + 1]))
end
return 1
"""
)


# KEYS: the slot sets. ARGV: the TTL (ms), then each slot's id. Returns how many were still held:
# a slot given back, or past its time, is not taken again.
_REDIS_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = 0
for i = 1, #KEYS do
  local held = redis.call('ZSCORE', KEYS[i], ARGV[1 + i])
  if held and tonumber(held) > now then
    redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[1]), ARGV[1 + i])
    if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
    renewed = renewed + 1
  end
end
return renewed
"""


class RedisAdmissions:
    """A whole admission in one script, and a request's end in another: slots and windows of every
    host that uses the same server. Same interface as the SQLite store's."""

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        connection = cast(redis.Redis, storage.get_connection())
        self._admit = connection.register_script(_REDIS_ADMIT)
        self._finish = connection.register_script(_REDIS_FINISH_ADMISSION)
        self._renew = connection.register_script(_REDIS_RENEW)

    def _window_keys(self, key: str) -> list[str]:
        current = self._storage.prefixed_key(f"{{{key}}}")
        return [f"{current}/-1", current]

    def admit_all(
        self,
        slots: Slots,
        checks: Checks,
        hits: Hits,
        seen: list[Window] | None = None,
    ) -> Admitted:
        """See ``SQLiteStorage.admit_all``: the same arguments and answers."""
        ids = [uuid.uuid4().hex for _ in slots]
        hit_keys = {key for key, _ in hits}
        keys = [SLOT_PREFIX + key for key, _, _ in slots]
        args: list[Any] = [len(slots), len(checks)]
        for (_, limit, ttl_s), slot in zip(slots, ids, strict=True):
            args += [limit, max(int(ttl_s * 1000), 1), slot]
        for key, expiry, limit in checks:
            keys += self._window_keys(key)
            args += [expiry, limit, 1 if key in hit_keys else 0]
        answer = self._admit(keys=keys, args=args)
        kind = answer[0].decode()
        if kind == "slot":
            return [], ("slot", answer[1])
        if kind == "window":
            previous, previous_ms, current, current_ms = answer[2:]
            return [], ("window", answer[1], (previous, previous_ms / 1000, current, current_ms / 1000))
        if seen is not None:
            counts = answer[1:]
            seen.extend(
                (counts[i], counts[i + 1] / 1000, counts[i + 2], counts[i + 3] / 1000)
                for i in range(0, len(counts), 4)
            )
        return ids, None

    def renew_all(self, slots: list[tuple[str, str]], ttl_s: float) -> int:
        """See ``SQLiteStorage.renew_all``."""
        keys = [SLOT_PREFIX + key for key, _ in slots]
        return int(self._renew(keys=keys, args=[max(int(ttl_s * 1000), 1), *(slot for _, slot in slots)]))

    def finish_all(self, slots: list[tuple[str, str]], counted: list[tuple[str, int, int]]) -> None:
        """Release ``slots`` and add to windows (``counted``: key, expiry, amount) at once."""
        keys = [SLOT_PREFIX + key for key, _ in slots]
        args: list[Any] = [len(slots), *(slot for _, slot in slots)]
        for key, expiry, amount in counted:
            keys += self._window_keys(key)
            args += [expiry, amount]
        self._finish(keys=keys, args=args)
