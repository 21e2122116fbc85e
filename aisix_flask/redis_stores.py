"""Redis stores: concurrency slots and idempotency records shared by every host on one server.

The windows of the rate limits use ``limits``' own RedisStorage; these are what it lacks.
"""

from __future__ import annotations

import json
import uuid

import redis

from .limit_stores import Record

SLOT_PREFIX = "aisix:slots:"


# Slots are a sorted set scored by expiry; the server's clock decides, so hosts may drift.
_REDIS_ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


_REDIS_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HGET', KEYS[1], 'state')
if state and not (state == 'running' and tonumber(redis.call('HGET', KEYS[1], 'running_until')) <= now) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'body_hash', ARGV[1], 'state', 'running',
           'running_until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Only a record that still exists is finished: an expired one must not come back without a TTL.
_REDIS_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'status', ARGV[2], 'content_type', ARGV[3], 'headers', ARGV[4])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'body', ARGV[6]) end
return 1
"""
_REDIS_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'running' then return redis.call('DEL', KEYS[1]) end
return 0
"""
IDEMPOTENCY_PREFIX = "aisix:idem:"


class RedisIdempotency:
    """Idempotency records in Redis hashes, shared by every host on the same server."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._claim = connection.register_script(_REDIS_CLAIM)
        self._finish = connection.register_script(_REDIS_FINISH)
        self._release = connection.register_script(_REDIS_RELEASE)

    def claim(self, key: str, body_hash: str, running_s: float, ttl_s: float) -> Record | None:
        if self._claim(
            keys=[IDEMPOTENCY_PREFIX + key], args=[body_hash, running_s, max(int(ttl_s * 1000), 1)]
        ):
            return None
        return self.record(key) or self.claim(key, body_hash, running_s, ttl_s)

    def record(self, key: str) -> Record | None:
        fields = self._redis.hgetall(IDEMPOTENCY_PREFIX + key)
        if not fields:
            return None
        text = {k.decode(): v for k, v in fields.items()}
        return Record(
            body_hash=text["body_hash"].decode(),
            state=text["state"].decode(),
            status=int(text["status"]) if "status" in text else None,
            content_type=text["content_type"].decode() if "content_type" in text else None,
            headers=json.loads(text["headers"]) if "headers" in text else {},
            body=text.get("body"),
        )

    def finish(self, key: str, answer: Record) -> None:
        has_body = answer.body is not None
        self._finish(
            keys=[IDEMPOTENCY_PREFIX + key],
            args=[answer.state, answer.status or 0, answer.content_type or "application/json",
                  json.dumps(answer.headers), "1" if has_body else "0", answer.body if has_body else b""],
        )  # fmt: skip

    def release(self, key: str) -> None:
        self._release(keys=[IDEMPOTENCY_PREFIX + key])


class RedisSlots:
    """Concurrency slots in Redis, shared by every host that uses the same server."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._acquire = connection.register_script(_REDIS_ACQUIRE_SLOT)

    def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        slot = uuid.uuid4().hex
        if self._acquire(keys=[f"{SLOT_PREFIX}{key}"], args=[limit, int(ttl_s * 1000), slot]):
            return slot
        return None

    def release_slot(self, key: str, slot: str) -> None:
        self._redis.zrem(f"{SLOT_PREFIX}{key}", slot)

    def release_slots(self, slots: list[tuple[str, str]]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for key, slot in slots:
                pipe.zrem(f"{SLOT_PREFIX}{key}", slot)
            pipe.execute()
