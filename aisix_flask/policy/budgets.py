"""USD budgets per caller key and per model row, per UTC calendar period (README, "Budgets").

Spend is the ledger's ``cost_usd``: a request's cost is added to every budget it falls under when
the request ends. A price known before the call (n images at a per-image price) is reserved when
the request is admitted, so a request that would pass a budget is refused up front; a price known
only from the answer (tokens) admits a request while the budget is not yet spent, so a budget can
be passed by the requests already in flight when it runs out.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .. import metrics
from ..config import Config
from ..config.resources import Budget
from ..errors import GatewayError, ServiceUnavailable
from ..stores import STORE_ERRORS
from ..stores.health import StoreHealth
from ..stores.spend import NANOS_PER_USD, Charge, SpendStore, nanos

log = logging.getLogger(__name__)


class BudgetExhausted(GatewayError):
    """429 ``insufficient_quota``: what OpenAI answers for a spent quota. Retrying cannot help
    before the period ends."""

    code = 429
    error_type = "insufficient_quota"
    error_code = "insufficient_quota"


@dataclass(frozen=True)
class BudgetScope:
    """A budget and whose it is: a caller key or a model row."""

    kind: str  # "key" | "model"
    name: str
    budget: Budget

    @property
    def label(self) -> str:
        return f"{'API key' if self.kind == 'key' else 'model'} '{self.name}'"


PERIODS = ("day", "week", "month", "total")


def period(name: str, now: datetime) -> tuple[str, datetime | None]:
    """The current period of a budget: an id for its counter, and when it ends (UTC; None: never).

    Weeks are ISO weeks (Monday to Sunday), months calendar months."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)  # the ledger's times are naive UTC
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if name == "day":
        return f"d{day:%Y-%m-%d}", day + timedelta(days=1)
    if name == "week":
        year, week, weekday = now.isocalendar()
        return f"w{year}-W{week:02d}", day + timedelta(days=8 - weekday)
    if name == "month":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return f"m{first:%Y-%m}", following
    return "total", None


def counter(kind: str, name: str, period_id: str) -> str:
    """The spend counter of a key or a model in a period."""
    return f"{kind}:{name}:{period_id}"


@dataclass
class Reservation:
    """What a request reserved (nano-dollars), on which counters; counted once when it ends."""

    charges: list[Charge] = field(default_factory=list)
    amount: int = 0


class Budgets:
    """Reserve before the call, count what it cost after it; fail closed when the store cannot be
    reached.

    A request under a budget is counted when it ends, in the store at once: the next reservation,
    in any process, sees it. Every other priced request is counted too (a budget set later finds
    the spend), but a process adds those up and writes them together within ``defer_s``: one
    write for many requests instead of one transaction each, which cost the hot path more than
    the rate limits' own end did.
    """

    defer_s = 0.05

    def __init__(self, store: SpendStore, health: StoreHealth) -> None:
        self.store = store
        self.health = health
        self._start_afresh()
        _OPEN.add(self)

    def _start_afresh(self) -> None:
        """Nothing deferred, and locks made at first use: at creation, and in a forked child
        (gunicorn's preload_app). There the parent's counts are the parent's to write, a lock one
        of its threads held would never be released, and gevent's worker patches threading only
        after the fork: a lock made before then would block the whole worker."""
        # (counting, writing): a flush is written whole before another (or exit) goes on
        self._locks: tuple[threading.Lock, threading.Lock] | None = None
        self._deferred: dict[str, list[Any]] = {}  # counter → [nano-dollars, period end]
        self._timer: threading.Timer | None = None

    def _locks_made(self) -> tuple[threading.Lock, threading.Lock]:
        with _MAKING_LOCKS:
            if self._locks is None:
                self._locks = (threading.Lock(), threading.Lock())
            return self._locks

    def reserve(self, scopes: Sequence[BudgetScope], amount_usd: float) -> Reservation:
        """Take ``amount_usd`` (0 when the price is known only afterwards) from every budget, or
        raise 429 naming the first that has not enough left; nothing is taken then."""
        if not scopes:
            return Reservation()
        now = datetime.now(UTC)
        amount = nanos(amount_usd)
        periods = [period(scope.budget.period, now) for scope in scopes]
        charges = [
            Charge(counter(scope.kind, scope.name, pid), nanos(scope.budget.usd), amount, _timestamp(end))
            for scope, (pid, end) in zip(scopes, periods, strict=True)
        ]
        try:
            refused = self.store.reserve(charges)
        except STORE_ERRORS as e:
            # A budget is a promise about money: without its counters the gateway cannot keep it,
            # so the request waits for the store rather than spend past the budget.
            self.health.failed("budgets: requests under a budget refused (503)", e)
            raise ServiceUnavailable(
                "The gateway cannot check this request's budget right now; retry shortly.",
                error_code="budget_unavailable",
                should_retry=True,
            ) from None
        self.health.answered()
        if refused is not None:
            raise _exhausted(scopes[refused], periods[refused][1], now)
        return Reservation(charges, amount)

    def count(
        self,
        reservation: Reservation,
        spenders: Sequence[tuple[str, str]],
        cost: float | None,
        when: datetime,
    ) -> None:
        """Add what a request cost to the counters of every period of its ``spenders`` (kind,
        name: its key, the model it named, the routing target that answered), whether a budget is
        set or not: one set later, or given another period, finds the spend already there; less
        what it reserved. ``when`` is when it started, as its ledger row says."""
        delta: dict[str, int] = {}
        ends: dict[str, float | None] = {}
        if cost:
            day = (when.astimezone(UTC) if when.tzinfo else when).date()
            for kind, name in spenders:
                for pid, end in _periods_of(day):
                    delta[counter(kind, name, pid)] = nanos(cost)
                    ends[counter(kind, name, pid)] = end
        for charge in reservation.charges:
            delta[charge.key] = delta.get(charge.key, 0) - charge.amount
            ends.setdefault(charge.key, charge.period_end)
        charges = [Charge(k, None, amount, ends[k]) for k, amount in delta.items() if amount]
        if not charges:
            return
        if reservation.charges:  # under a budget: the next reservation must see it
            self._add(charges)
        else:
            self._defer(charges)

    def flush(self) -> None:
        """Write the deferred counts now (a timer does it within ``defer_s``; also at exit), and
        wait for a write already under way: what was counted is in the store when this returns."""
        counting, writing = self._locks or self._locks_made()
        with writing:
            with counting:
                deferred, self._deferred = self._deferred, {}
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if deferred:
                self._add([Charge(key, None, amount, end) for key, (amount, end) in deferred.items()])

    def _defer(self, charges: list[Charge]) -> None:
        counting, _ = self._locks or self._locks_made()
        with counting:
            for charge in charges:
                held = self._deferred.setdefault(charge.key, [0, charge.period_end])
                held[0] += charge.amount
            if self._timer is None:
                self._timer = threading.Timer(self.defer_s, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def _add(self, charges: list[Charge]) -> None:
        try:
            self.store.add(charges)
        except STORE_ERRORS as e:
            self.health.failed("budgets: spend not counted (the ledger has it)", e)
        else:
            self.health.answered()

    def status(self, scopes: Sequence[BudgetScope]) -> list[dict[str, Any]]:
        """Each budget's limit, spend, remaining and period end, for the admin API and page."""
        self.flush()
        now = datetime.now(UTC)
        ends, keys = [], []
        for scope in scopes:
            pid, end = period(scope.budget.period, now)
            keys.append(counter(scope.kind, scope.name, pid))
            ends.append(end)
        spent = self.store.spent(keys)
        rows = []
        for scope, end, key in zip(scopes, ends, keys, strict=True):
            used = spent.get(key, 0)
            rows.append(
                {
                    "scope": scope.kind,
                    "name": scope.name,
                    "period": scope.budget.period,
                    "usd": scope.budget.usd,
                    "spent": used / NANOS_PER_USD,
                    "remaining": max(nanos(scope.budget.usd) - used, 0) / NANOS_PER_USD,
                    "period_end": end.isoformat().replace("+00:00", "Z") if end else None,
                }
            )
        return rows


_OPEN: weakref.WeakSet[Budgets] = weakref.WeakSet()
_MAKING_LOCKS = threading.Lock()  # held for no more than making two locks: never across a switch


@atexit.register
def _flush_all() -> None:
    """A worker that stops (SIGTERM, after its calls drained) writes what it deferred."""
    for budgets in list(_OPEN):
        budgets.flush()


def _after_fork() -> None:
    global _MAKING_LOCKS
    _MAKING_LOCKS = threading.Lock()
    for budgets in list(_OPEN):
        budgets._start_afresh()


os.register_at_fork(after_in_child=_after_fork)


def _timestamp(end: datetime | None) -> float | None:
    return end.timestamp() if end else None


@functools.lru_cache(maxsize=4)
def _periods_of(day: date) -> tuple[tuple[str, float | None], ...]:
    """Every period a UTC day falls in: its counter id and end (a request ends on one of a few
    days, so each is worked out once)."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return tuple((pid, _timestamp(end)) for pid, end in (period(name, midnight) for name in PERIODS))


def configured(config: Config) -> list[BudgetScope]:
    """Every budget in the config: the caller keys', then the model rows'."""
    scopes = [BudgetScope("key", k.display_name, k.budget) for k in config.api_keys if k.budget]
    models = config.router.exact() + config.router.patterns()
    return scopes + [BudgetScope("model", m.display_name, m.budget) for m in models if m.budget]


def _exhausted(scope: BudgetScope, end: datetime | None, now: datetime) -> BudgetExhausted:
    metrics.BUDGET_REFUSALS.labels(scope.kind).inc()
    budget = scope.budget
    per = "in total" if end is None else f"per {budget.period} (UTC)"
    message = f"Budget exhausted: {scope.label} may spend {budget.usd:g} USD {per}."
    headers = {}
    if end is not None:
        seconds = max(1, math.ceil((end - now).total_seconds()))
        headers["Retry-After"] = str(seconds)
        message += f" The period ends at {end:%Y-%m-%dT%H:%M:%SZ}."
    return BudgetExhausted(message, headers=headers)
