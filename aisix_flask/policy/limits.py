"""Rate limits and concurrency slots: the one interface the routes use, whatever the store.

Request and token windows are the ``limits`` library's sliding-window counters, in its own
storages: its RedisStorage, or the SQLite storage in ``stores.sqlite`` (registered with ``limits``
under the ``sqlite`` scheme). Concurrency slots are not a ``limits`` concept; both stores keep
slots that expire, so a crashed worker cannot hold one forever. A request to a direct model is two
calls to the store: one admission (all slots and windows, all or nothing) and one finish (tokens
counted, slots given back): a transaction each on SQLite, a script each on Redis. Under request
windows alone (rpm, rpd) there is nothing to finish: one call. A routing model's request takes one
more admission, and gives it back, for each target it leaves for another.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis
from limits import RateLimitItem
from limits.errors import StorageError
from limits.storage import RedisStorage, storage_from_string

from .. import metrics
from ..config.resources import RateLimit
from ..errors import RateLimited
from ..stores import STORE_ERRORS
from ..stores.admissions import AdmissionStore, Checks, Hits, Slots
from ..stores.health import StoreHealth
from ..stores.redis import RedisAdmissions
from ..stores.sqlite import SQLiteStorage  # (importing it registers sqlite:/// URLs with limits)
from .limit_headers import headers_for, rate_limit_headers
from .windows import REQUEST_RULES, TOKEN_RULES, seconds_until_free, window_state
from .windows import kind as window_kind

log = logging.getLogger(__name__)

NAMESPACE = "aisix"
PING_TIMEOUT_S = 1.0
UNITS = {
    "rpm": "requests per minute",
    "rpd": "requests per day",
    "tpm": "tokens per minute",
    "tpd": "tokens per day",
    "concurrency": "concurrent requests",
}


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
    def slot_key(self) -> str:
        """Where this scope's concurrency slots are kept."""
        return ":".join(self.ids)

    @property
    def label(self) -> str:
        return f"{'API key' if self.kind == 'key' else 'model'} '{self.name}'"


class Group(NamedTuple):
    """What one ``admit_together`` group takes: its scopes' limits, and slots that only count."""

    scopes: Sequence[Scope]
    counted: Sequence[str] = ()


# A slot that only counts (calls in flight at a routing target): no count reaches it.
UNCOUNTED_LIMIT = 2**62


@dataclass
class Admission:
    """What a request holds while it runs: slots to release and token windows to charge; and the
    rate-limit headers its answer carries."""

    slots: list[tuple[str, str]] = field(default_factory=list)  # (slot key, slot id)
    token_windows: list[tuple[str, int]] = field(default_factory=list)  # (window key, expiry)
    headers: dict[str, str] = field(default_factory=dict)
    store_failed: bool = False  # let through because the store did not answer


_STORAGE_ERRORS = (StorageError, *STORE_ERRORS)


class Limiter:
    """The one interface the routes use: admit, then finish. The backend is the URL's."""

    def __init__(self, url: str) -> None:
        self.url = url
        storage = storage_from_string(url, wrap_exceptions=True)
        # The config takes only these two (sqlite:///…, redis://…).
        assert isinstance(storage, SQLiteStorage | RedisStorage), url
        self.storage: SQLiteStorage | RedisStorage = storage
        # Both stores take a whole admission at once (SQLite in one transaction, Redis in one
        # script), and a request's end (tokens counted, slots given back) at once too.
        self.store: AdmissionStore = (
            RedisAdmissions(storage) if isinstance(storage, RedisStorage) else storage
        )
        # The same store holds the budgets' counters and the idempotency records: one health.
        self.health = StoreHealth("ratelimit", url)
        self._probe: redis.Redis | None = None  # what /readyz pings Redis through, made at first use

    def admit(self, scopes: Sequence[Scope], slot_ttl_s: float) -> Admission:
        """Take a concurrency slot and one request from every window, or raise 429.

        Every window is checked before any is spent, so a request the model's limit refuses
        does not use up the caller key's. When the store is unreachable the request is let
        through (logged): an outage of the limiter should not become an outage of the gateway.
        """
        return self.admit_together([Group(scopes)], slot_ttl_s)[0]

    def admit_together(self, groups: Sequence[Group], slot_ttl_s: float) -> list[Admission]:
        """``admit`` for several groups of scopes in one turn at the store, all or nothing: an
        Admission per group, or 429 (its ``refused_group`` says whose limit it was). Each group
        may also take slots that only count (``Group.counted``: calls in flight at a routing
        target), which no limit refuses."""
        plans = [_plan(tuple(group.scopes)) for group in groups]
        if not any(
            plan.slots or plan.windows or group.counted for plan, group in zip(plans, groups, strict=True)
        ):
            return [Admission() for _ in groups]
        slots: Slots = []
        checks: Checks = []
        hits: Hits = []
        for plan, group in zip(plans, groups, strict=True):
            slots += [(key, limit, slot_ttl_s) for key, limit in plan.slots]
            slots += [(key, UNCOUNTED_LIMIT, slot_ttl_s) for key in group.counted]
            checks += plan.checks
            hits += plan.hits
        seen: list[tuple[int, float, int, float]] = []
        try:
            ids, refusal = self.store.admit_all(slots, checks, hits, seen)
        except _STORAGE_ERRORS as e:
            self.health.failed("rate limits: requests let through", e)
            return [Admission(store_failed=True) for _ in groups]
        self.health.answered()
        if refusal is not None:
            raise _refusal(plans, groups, refusal)
        admissions = []
        for plan, group in zip(plans, groups, strict=True):
            taken = len(plan.slots) + len(group.counted)
            keys = [key for key, _ in plan.slots] + list(group.counted)
            admissions.append(
                Admission(
                    slots=list(zip(keys, ids[:taken], strict=True)),
                    token_windows=list(plan.token_windows),
                    headers=rate_limit_headers(plan.windows, seen[: len(plan.checks)]),
                )
            )
            ids, seen = ids[taken:], seen[len(plan.checks) :]
        return admissions

    def finish(self, *admissions: Admission, tokens: int = 0) -> None:
        """The request is over: count the tokens the upstream reported against its token
        windows (spent tokens count even past the limit), and give back its concurrency slots
        (they also expire on their own); for every admission given, in one turn at the store."""
        counted = [
            (key, expiry, tokens) for admission in admissions for key, expiry in admission.token_windows
        ]
        if tokens <= 0:
            counted = []
        slots = []
        for admission in admissions:
            slots += admission.slots
            admission.slots = []
        if not (slots or counted):
            return
        try:
            self.store.finish_all(slots, counted)
        except _STORAGE_ERRORS as e:
            self.health.failed("rate limits: tokens not counted, slots left to expire", e)
        else:
            self.health.answered()

    def renew(self, admission: Admission, ttl_s: float) -> None:
        """A request still running keeps its concurrency slots for ``ttl_s`` more (a stream's
        slots are leased, so that a worker that dies mid-stream does not hold them for long)."""
        if not admission.slots:
            return
        try:
            renewed = self.store.renew_all(admission.slots, ttl_s)
        except (*_STORAGE_ERRORS, OSError) as e:
            self.health.failed("rate limits: a stream's slots not renewed (they may expire first)", e)
            return
        if renewed < len(admission.slots):
            log.warning("%d of a running stream's %d concurrency slots had expired: until it ends it "
                        "is not counted against its limits", len(admission.slots) - renewed,
                        len(admission.slots))  # fmt: skip

    def headers(self, scopes: Sequence[Scope]) -> dict[str, str]:
        """The rate-limit headers of a request that was not admitted (refused before step 10, or
        by a concurrency limit): the windows as they are, read one by one. Empty when the store
        cannot answer."""
        plan = _plan(tuple(scopes))
        try:
            seen = [self.storage.get_sliding_window(key, expiry) for key, expiry, _ in plan.checks]
        except _STORAGE_ERRORS:
            return {}
        return rate_limit_headers(plan.windows, seen, admitted=False)

    def ping(self) -> bool:
        """Tell whether the store answers (/readyz), within ``PING_TIMEOUT_S``: a probe must not
        wait on a Redis that accepts connections and never answers."""
        try:
            if isinstance(self.storage, RedisStorage):
                if self._probe is None:  # the same Redis, through a client that gives up in time
                    self._probe = redis.Redis.from_url(
                        self.url, socket_timeout=PING_TIMEOUT_S, socket_connect_timeout=PING_TIMEOUT_S
                    )
                self._probe.ping()
            elif not self.storage.check():
                raise ConnectionError("it did not answer a ping")
        except (*_STORAGE_ERRORS, ConnectionError) as e:
            self.health.failed("/readyz", e)
            return False
        self.health.answered()
        return True


class _Plan(NamedTuple):
    """What admitting a request under these scopes asks of a store that admits at once."""

    slotted: list[Scope]  # the scopes with a concurrency limit
    slots: list[tuple[str, int]]  # (slot key, limit) of each
    windows: list[tuple[Scope, str, RateLimitItem]]  # request windows, then token windows
    checks: list[tuple[str, int, int]]  # (key, expiry, limit) of each window
    hits: list[tuple[str, int]]  # (key, expiry) of the request windows
    token_windows: list[tuple[str, int]]  # (key, expiry) of the token windows


@functools.lru_cache(maxsize=1024)
def _plan(scopes: tuple[Scope, ...]) -> _Plan:
    """Worked out once per set of scopes (a few µs saved on every request: keys are strings
    built by ``limits``). A config reload makes new scopes, and so new plans."""
    requests, tokens = _windows(scopes, REQUEST_RULES), _windows(scopes, TOKEN_RULES)
    slotted = [s for s in scopes if s.limit.concurrency]
    windows = [*requests, *tokens]
    return _Plan(
        slotted=slotted,
        slots=[(s.slot_key, limit) for s in slotted if (limit := s.limit.concurrency)],
        windows=windows,
        checks=[(item.key_for(*s.ids), item.get_expiry(), item.amount) for s, _, item in windows],
        hits=[(item.key_for(*s.ids), item.get_expiry()) for s, _, item in requests],
        token_windows=[(item.key_for(*s.ids), item.get_expiry()) for s, _, item in tokens],
    )


def _windows(
    scopes: Sequence[Scope], rules: dict[str, type[RateLimitItem]]
) -> list[tuple[Scope, str, RateLimitItem]]:
    return [
        (scope, rule, item_class(getattr(scope.limit, rule), namespace=NAMESPACE))
        for scope in scopes
        for rule, item_class in rules.items()
        if getattr(scope.limit, rule)
    ]


def _refusal(plans: list[_Plan], groups: Sequence[Group], refusal: tuple[Any, ...]) -> RateLimited:
    """The 429 for what the store refused: ("slot", i) or ("window", i, window), i counted over
    every group's slots (or windows) in turn."""
    kind, index = refusal[0], refusal[1]
    for number, (plan, group) in enumerate(zip(plans, groups, strict=True)):
        held = len(plan.slots) + len(group.counted) if kind == "slot" else len(plan.windows)
        if index >= held:
            index -= held
            continue
        if kind == "slot":  # (counted slots have no limit: a refused slot is a limited one)
            error = _exceeded(plan.slotted[index], "concurrency", 1)
        else:
            scope, rule, item = plan.windows[index]
            error = _exceeded(scope, rule, seconds_until_free(refusal[2], item.get_expiry(), item.amount))
            _, limit, reset = window_state(refusal[2], item.get_expiry(), item.amount, False)
            error.extra_headers.update(headers_for(window_kind(rule), limit, 0, reset))
        error.refused_group = number
        return error
    raise AssertionError(f"a refusal of nothing admitted: {refusal}")


def _exceeded(scope: Scope, rule: str, wait: float) -> RateLimited:
    metrics.RATE_LIMITED.labels(scope.kind, rule).inc()
    seconds = max(1, math.ceil(wait))
    amount = getattr(scope.limit, rule)
    return RateLimited(
        f"Rate limit exceeded: {scope.label} allows {amount} {UNITS[rule]}. Retry after {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )
