"""Where the shared counters live: SQLite for one host (``sqlite``), Redis for several (``redis``).

This module holds what both kinds share: the interface the limiter uses, an idempotency record,
and the sliding-window arithmetic.
"""

from __future__ import annotations

import math
import sqlite3
from typing import NamedTuple, Protocol

import redis

# What a store raises when it cannot answer (the file or the server), whichever the backend.
STORE_ERRORS = (sqlite3.Error, redis.RedisError)


class AdmissionStore(Protocol):
    """Where a whole admission is taken at once, and a request's end given back at once: the
    ``sqlite.SQLiteStorage``, or ``redis.RedisAdmissions``."""

    def admit_all(
        self,
        slots: list[tuple[str, int, float]],
        checks: list[tuple[str, int, int]],
        hits: list[tuple[str, int]],
        seen: list | None = None,
    ) -> tuple[list[str], tuple | None]: ...

    def finish_all(self, slots: list[tuple[str, str]], counted: list[tuple[str, int, int]]) -> None: ...

    def renew_all(self, slots: list[tuple[str, str]], ttl_s: float) -> int: ...

    def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None: ...

    def release_slot(self, key: str, slot: str) -> None: ...


class SingleSlots:
    """One slot at a time, for a store that takes whole admissions (tests and tools use these)."""

    def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        ids, refusal = self.admit_all([(key, limit, ttl_s)], [], [])
        return None if refusal else ids[0]

    def release_slot(self, key: str, slot: str) -> None:
        self.finish_all([(key, slot)], [])


def weighted_count(window: tuple[int, float, int, float], expiry: int) -> int:
    """A sliding-window counter's count now: the previous window in proportion to how much of it
    still overlaps, plus the current one (``window`` as ``get_sliding_window`` returns it)."""
    previous, previous_ttl, current, _ = window
    return math.floor(previous * previous_ttl / expiry) + current


class Record(NamedTuple):
    """What an idempotency key holds: the request's body hash, and its answer once finished."""

    body_hash: str
    state: str  # running | done | too_large
    status: int | None = None
    content_type: str | None = None
    headers: dict[str, str] = {}
    body: bytes | None = None
