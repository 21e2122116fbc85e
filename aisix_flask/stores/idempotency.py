"""Idempotency records beside the rate-limit counters: the same SQLite file for one host, the
same Redis for several.

A record is claimed ('running') when a request with a new key starts, and finished with the answer
(or released when nothing was sent). A running record whose request outlived its time is taken
over: its worker died.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, Protocol, cast

import redis
from limits.storage import RedisStorage

from .sqlite import SQLiteStorage


class Record(NamedTuple):
    """What an idempotency key holds: the request's body hash, and its answer once finished."""

    body_hash: str
    state: str  # running | done | too_large
    status: int | None = None
    content_type: str | None = None
    headers: dict[str, str] = {}
    body: bytes | None = None


class IdempotencyStore(Protocol):
    """``SQLiteIdempotency`` or ``RedisIdempotency``."""

    def claim(self, key: str, body_hash: str, running_s: float, ttl_s: float) -> Record | None:
        """Claim ``key`` for a new request (None), or return the record that holds it; a running
        record whose request outlived ``running_s`` (a crashed worker) is taken over."""

    def finish(self, key: str, answer: Record) -> None:
        """Keep ``answer`` as the key's record, for as long as the key lives."""

    def release(self, key: str) -> None:
        """Forget a running claim (nothing was sent upstream: a retry may really run)."""


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, state TEXT NOT NULL, running_until REAL NOT NULL,
    expires_at REAL NOT NULL, status INTEGER, content_type TEXT, headers TEXT, body BLOB
)
"""
_RECORD = "body_hash, state, running_until, status, content_type, headers, body"


class SQLiteIdempotency:
    """Idempotency records in the limiter's SQLite file: each step is one transaction."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        with storage.transaction() as db:
            db.execute(_SQLITE_SCHEMA)

    def claim(self, key: str, body_hash: str, running_s: float, ttl_s: float) -> Record | None:
        """Claim ``key`` for a new request (None), or return the record that holds it. A running
        record whose request outlived ``running_s`` (a crashed worker) is taken over."""
        with self._storage.transaction() as db:
            now = time.time()
            db.execute("DELETE FROM idempotency WHERE key = ? AND expires_at <= ?", (key, now))
            row = db.execute(f"SELECT {_RECORD} FROM idempotency WHERE key = ?", (key,)).fetchone()
            if row is not None and not (row[1] == "running" and row[2] <= now):
                return _record(row)
            db.execute(
                "INSERT OR REPLACE INTO idempotency (key, body_hash, state, running_until, expires_at)"
                " VALUES (?, ?, 'running', ?, ?)",
                (key, body_hash, now + running_s, now + ttl_s),
            )
        return None

    def finish(self, key: str, answer: Record) -> None:
        with self._storage.transaction() as db:
            db.execute(
                "UPDATE idempotency SET state = ?, status = ?, content_type = ?, headers = ?, body = ?"
                " WHERE key = ?",
                (
                    answer.state,
                    answer.status,
                    answer.content_type,
                    json.dumps(answer.headers),
                    answer.body,
                    key,
                ),
            )

    def release(self, key: str) -> None:
        with self._storage.transaction() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND state = 'running'", (key,))


def _record(row: tuple[Any, ...]) -> Record:
    return Record(row[0], row[1], row[3], row[4], json.loads(row[5]) if row[5] else {}, row[6])


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
        fields = cast(dict[bytes, bytes], self._redis.hgetall(IDEMPOTENCY_PREFIX + key))
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
                  json.dumps(answer.headers), "1" if has_body else "0", answer.body or b""],
        )  # fmt: skip

    def release(self, key: str) -> None:
        self._release(keys=[IDEMPOTENCY_PREFIX + key])


def idempotency_store_for(limit_storage: Any) -> IdempotencyStore:
    """The idempotency store beside the rate-limit counters: the same SQLite file or Redis."""
    if isinstance(limit_storage, RedisStorage):
        return RedisIdempotency(cast(redis.Redis, limit_storage.get_connection()))
    return SQLiteIdempotency(limit_storage)
