"""Rate limits and concurrency slots, shared by every worker (SQLite) or every host (Redis).

Request and token windows use the ``limits`` library's sliding-window-counter strategy: on
Redis with its own RedisStorage, on SQLite with the storage below (registered with ``limits``
under the ``sqlite`` scheme). Concurrency slots are not a ``limits`` concept; each backend has a
small slot store whose slots expire, so a crashed worker cannot hold one forever.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import RedisStorage, SlidingWindowCounterSupport, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from .errors import RateLimited
from .resources import RateLimit

log = logging.getLogger(__name__)

NAMESPACE = "aisix"
REQUEST_RULES = {"rpm": RateLimitItemPerMinute, "rpd": RateLimitItemPerDay}
TOKEN_RULES = {"tpm": RateLimitItemPerMinute, "tpd": RateLimitItemPerDay}
UNITS = {
    "rpm": "requests per minute",
    "rpd": "requests per day",
    "tpm": "tokens per minute",
    "tpd": "tokens per day",
    "concurrency": "concurrent requests",
}
# Spent tokens are counted even past the limit (the upstream already used them): an
# acquire against this limit always succeeds.
UNBOUNDED = 2**53


def seconds_until_free(
    window: tuple[int, float, int, float], expiry: int, limit: int, cost: int = 1
) -> float:
    """How long until ``cost`` more fits, for a sliding-window-counter ``window``.

    ``window`` is what ``get_sliding_window`` returns: (previous count, previous TTL,
    current count, current TTL). The previous window weighs ``previous TTL / expiry``;
    when the current window ends it becomes the previous one with full weight.
    """
    previous, previous_ttl, current, current_ttl = window
    room = limit - cost
    if room < 0:
        return float(expiry)
    if math.floor(previous * previous_ttl / expiry) + current <= room:
        return 0.0
    # The conditions below are strict (count < room + 1): a moment past the boundary fits.
    end = current_ttl - expiry if current_ttl > expiry else previous_ttl
    if current <= room:
        t = previous_ttl - (room - current + 1) * expiry / previous
        if t <= end:
            return max(t, 0.0) + _MOMENT
    if current == 0:
        return max(end, 0.0) + _MOMENT
    return max(end, end + expiry - (room + 1) * expiry / current) + _MOMENT


_MOMENT = 0.001


class SlotStore(Protocol):
    """Concurrency slots that expire on their own."""

    def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None: ...

    def release_slot(self, key: str, slot: str) -> None: ...


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    key TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (key, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slots (
    key TEXT NOT NULL, id TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (key, id)
) WITHOUT ROWID;
"""


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` → ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError(f"not a sqlite file URL: {url!r}")
    return url[len("sqlite:///") :]


class SQLiteStorage(Storage, SlidingWindowCounterSupport):
    """A ``limits`` storage in one SQLite file: every gunicorn worker on a host shares it."""

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self.path = sqlite_path(uri)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._local = threading.local()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._db().executescript(_SQLITE_SCHEMA)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            for attempt in range(50):  # switching to WAL needs a moment alone with the file
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.02 * (attempt + 1))
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the file's write lock from its first statement."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- the storage contract of ``limits`` --

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM counters WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
                (key, amount, now + expiry, amount),
            )
            return db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()[0]

    def get(self, key: str) -> int:
        row = (
            self._db()
            .execute("SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, time.time()))
            .fetchone()
        )
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._db().execute("SELECT expires_at FROM counters WHERE key = ?", (key,)).fetchone()
        return row[0] if row else time.time()

    def check(self) -> bool:
        try:
            self._db().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def reset(self) -> int | None:
        with self._write() as db:
            return sum(db.execute(f"DELETE FROM {t}").rowcount for t in ("counters", "windows", "slots"))

    def clear(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM counters WHERE key = ?", (key,))

    def _window(
        self, db: sqlite3.Connection, key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        # Windows are aligned to multiples of ``expiry``, as in limits' MemoryStorage.
        current = int(now // expiry)
        counts = dict(
            db.execute("SELECT window, count FROM windows WHERE key = ? AND window >= ?", (key, current - 1))
        )
        previous_count, current_count = counts.get(current - 1, 0), counts.get(current, 0)
        to_end = (current + 1) * expiry - now
        return previous_count, (to_end if previous_count else 0.0), current_count, to_end + expiry

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self._window(self._db(), key, expiry, time.time())

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self._write() as db:
            now = time.time()
            previous, previous_ttl, current, _ = self._window(db, key, expiry, now)
            if math.floor(previous * previous_ttl / expiry) + current + amount > limit:
                return False
            window = int(now // expiry)
            db.execute(
                "INSERT INTO windows VALUES (?, ?, ?) "
                "ON CONFLICT(key, window) DO UPDATE SET count = count + excluded.count",
                (key, window, amount),
            )
            db.execute("DELETE FROM windows WHERE key = ? AND window < ?", (key, window - 1))
        return True

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM windows WHERE key = ?", (key,))

    # -- concurrency slots --

    def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        slot = uuid.uuid4().hex
        with self._write() as db:
            now = time.time()
            db.execute("DELETE FROM slots WHERE key = ? AND expires_at <= ?", (key, now))
            (taken,) = db.execute("SELECT count(*) FROM slots WHERE key = ?", (key,)).fetchone()
            if taken >= limit:
                return None
            db.execute("INSERT INTO slots VALUES (?, ?, ?)", (key, slot, now + ttl_s))
        return slot

    def release_slot(self, key: str, slot: str) -> None:
        self._db().execute("DELETE FROM slots WHERE key = ? AND id = ?", (key, slot))


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


class RedisSlots:
    """Concurrency slots in Redis, shared by every host that uses the same server."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection
        self._acquire = connection.register_script(_REDIS_ACQUIRE_SLOT)

    def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        slot = uuid.uuid4().hex
        if self._acquire(keys=[f"{NAMESPACE}:slots:{key}"], args=[limit, int(ttl_s * 1000), slot]):
            return slot
        return None

    def release_slot(self, key: str, slot: str) -> None:
        self._redis.zrem(f"{NAMESPACE}:slots:{key}", slot)


@dataclass(frozen=True)
class Scope:
    """What a ``rate_limit`` block belongs to: a caller key or a configured model row."""

    kind: str  # "key" | "model"
    name: str
    limit: RateLimit

    @property
    def ids(self) -> tuple[str, str]:
        """What identifies this scope's windows and slots in the store."""
        return (self.kind, self.name)

    @property
    def label(self) -> str:
        return f"{'API key' if self.kind == 'key' else 'model'} '{self.name}'"


@dataclass
class Admission:
    """What a request holds while it runs: slots to release and token windows to charge."""

    slots: list[tuple[str, str]] = field(default_factory=list)
    token_windows: list[tuple[RateLimitItem, tuple[str, str]]] = field(default_factory=list)


_STORAGE_ERRORS = (StorageError, sqlite3.Error, redis.RedisError)


class Limiter:
    """The one interface the routes use: admit, charge tokens, release. The backend is the URL's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.storage = storage_from_string(url, wrap_exceptions=True)
        self.windows = SlidingWindowCounterRateLimiter(self.storage)
        if isinstance(self.storage, RedisStorage):
            self.slots: SlotStore = RedisSlots(self.storage.get_connection())
        else:
            self.slots = self.storage

    def admit(self, scopes: Sequence[Scope], slot_ttl_s: float) -> Admission:
        """Take a concurrency slot and one request from every window, or raise 429.

        Every window is checked before any is spent, so a request the model's limit refuses
        does not use up the caller key's. When the store is unreachable the request is let
        through (logged): an outage of the limiter should not become an outage of the gateway.
        """
        admission = Admission()
        if not any(scope.limit for scope in scopes):
            return admission
        try:
            for scope in scopes:
                if scope.limit.concurrency:
                    key = ":".join(scope.ids)
                    slot = self.slots.acquire_slot(key, scope.limit.concurrency, slot_ttl_s)
                    if slot is None:
                        raise _exceeded(scope, "concurrency", 1)
                    admission.slots.append((key, slot))
            requests, tokens = _windows(scopes, REQUEST_RULES), _windows(scopes, TOKEN_RULES)
            waits = [
                (seconds_until_free(self.storage.get_sliding_window(item.key_for(*s.ids), item.get_expiry()),
                                    item.get_expiry(), item.amount), s, rule)
                for s, rule, item in (*requests, *tokens)
            ]  # fmt: skip
            wait, scope, rule = max(waits, key=lambda w: w[0], default=(0.0, None, None))
            if wait > 0:
                raise _exceeded(scope, rule, wait)
            for scope, rule, item in requests:
                if not self.windows.hit(item, *scope.ids):  # another request took the last one
                    window = self.storage.get_sliding_window(item.key_for(*scope.ids), item.get_expiry())
                    raise _exceeded(scope, rule, seconds_until_free(window, item.get_expiry(), item.amount))
            admission.token_windows = [(item, scope.ids) for scope, _, item in tokens]
        except RateLimited:
            self.release(admission)
            raise
        except _STORAGE_ERRORS as e:
            log.error("rate-limit store %s failed, request let through: %s", _safe(self.url), e)
            self.release(admission)
            return Admission()
        return admission

    def charge(self, admission: Admission, tokens: int) -> None:
        """Count the tokens the upstream reported against every token window of the request."""
        if tokens <= 0:
            return
        for item, ids in admission.token_windows:
            try:
                self.storage.acquire_sliding_window_entry(
                    item.key_for(*ids), UNBOUNDED, item.get_expiry(), tokens
                )
            except _STORAGE_ERRORS as e:
                log.error("rate-limit store %s failed to count %d tokens: %s", _safe(self.url), tokens, e)

    def release(self, admission: Admission) -> None:
        """Give back the request's concurrency slots (they also expire on their own)."""
        while admission.slots:
            key, slot = admission.slots.pop()
            try:
                self.slots.release_slot(key, slot)
            except _STORAGE_ERRORS as e:
                log.error(
                    "rate-limit store %s failed to release a slot (it will expire): %s", _safe(self.url), e
                )

    def ping(self) -> bool:
        """Tell whether the store answers."""
        try:
            return bool(self.storage.check())
        except _STORAGE_ERRORS:
            return False


def _windows(
    scopes: Sequence[Scope], rules: dict[str, type[RateLimitItem]]
) -> list[tuple[Scope, str, RateLimitItem]]:
    return [
        (scope, rule, item_class(getattr(scope.limit, rule), namespace=NAMESPACE))
        for scope in scopes
        for rule, item_class in rules.items()
        if getattr(scope.limit, rule)
    ]


def _exceeded(scope: Scope, rule: str, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    amount = getattr(scope.limit, rule)
    return RateLimited(
        f"Rate limit exceeded: {scope.label} allows {amount} {UNITS[rule]}. Retry after {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


def _safe(url: str) -> str:
    """The store's URL without a password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
