"""Which caller key created each stored response of OpenAI's Responses API, and through which model
row, beside the rate-limit counters (the same SQLite file for one host, the same Redis for
several): ``GET``/``DELETE /v1/responses/{id}`` go to the provider that holds it, for that caller
only. Kept as long as OpenAI keeps a response (30 days).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Protocol, cast

import redis
from limits.storage import RedisStorage

from .sqlite import SQLiteStorage

KEEP_S = 30 * 86400


class Owner(NamedTuple):
    api_key: str  # the caller key's display name
    target: str  # the direct model row that created it


class ResponseOwners(Protocol):
    """``SQLiteOwners`` or ``RedisOwners``."""

    def remember(self, response_id: str, owner: Owner) -> None: ...

    def owner(self, response_id: str) -> Owner | None: ...

    def forget(self, response_id: str) -> None: ...


class SQLiteOwners:
    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self._next_sweep = 0.0
        with storage.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS response_owners (id TEXT PRIMARY KEY, api_key TEXT NOT NULL,"
                " target TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
            )

    def remember(self, response_id: str, owner: Owner) -> None:
        now = time.time()
        with self._storage.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO response_owners VALUES (?, ?, ?, ?)",
                (response_id, owner.api_key, owner.target, now + KEEP_S),
            )
            if now >= self._next_sweep:  # the expired ones, once an hour (a scan of the table)
                self._next_sweep = now + 3600
                db.execute("DELETE FROM response_owners WHERE expires_at <= ?", (now,))

    def owner(self, response_id: str) -> Owner | None:
        rows = self._storage.read(
            "SELECT api_key, target FROM response_owners WHERE id = ? AND expires_at > ?",
            (response_id, time.time()),
        )
        return Owner(*rows[0]) if rows else None

    def forget(self, response_id: str) -> None:
        with self._storage.transaction() as db:
            db.execute("DELETE FROM response_owners WHERE id = ?", (response_id,))


PREFIX = "aisix:response:"


class RedisOwners:
    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection

    def remember(self, response_id: str, owner: Owner) -> None:
        self._redis.set(PREFIX + response_id, f"{owner.api_key}\n{owner.target}", ex=KEEP_S)

    def owner(self, response_id: str) -> Owner | None:
        value = self._redis.get(PREFIX + response_id)
        if value is None:
            return None
        api_key, _, target = (value.decode() if isinstance(value, bytes) else str(value)).partition("\n")
        return Owner(api_key, target)

    def forget(self, response_id: str) -> None:
        self._redis.delete(PREFIX + response_id)


def response_owners_for(limit_storage: Any) -> ResponseOwners:
    """The records beside the rate-limit counters: the same SQLite file or Redis."""
    if isinstance(limit_storage, RedisStorage):
        return RedisOwners(cast(redis.Redis, limit_storage.get_connection()))
    return SQLiteOwners(limit_storage)
