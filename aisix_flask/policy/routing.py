"""The order in which a routing model's targets are tried, and the figures that order reads:
which targets cool down after a failure, how many calls each has in flight, how fast each answered.

Targets are tried tier by tier (``priority``, highest first) and, within a tier, in the order the
strategy gives (README, "Routing and failover"):

- ``failover``: the configured order;
- ``round_robin``: smooth weighted round robin (nginx's) picks the first, the rest follow in order;
- ``least_busy``: fewest calls in flight per unit of weight first;
- ``least_latency``: targets with no figure yet first (so they get one), then the lowest moving
  average of recent latency (a stream's: to its first event);
- ``consistent_hash``: rendezvous hashing of the request's key (a header, else the caller key):
  the same key keeps landing on the same target while it is eligible.

The figures live in the store beside the rate limits (``stores.routing``), so a target cooled by
one worker is skipped by every worker and host. When that store does not answer, each worker goes
on with its own view (it keeps one all along), and the store's health says so once per interval.
Round robin's turn is each worker's own: every worker keeps the weights' proportions.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .. import metrics
from ..config.aliases import Candidate, Plan
from ..stores import STORE_ERRORS
from ..stores.health import StoreHealth
from ..stores.routing import Ending, MemoryRouting, RoutingStore, TargetFigures


@dataclass
class Lease:
    """A call in flight to a target, until its end is recorded (``RoutingState.ended``)."""

    target: str
    slot: str  # in this worker's own view
    latency_ms: float | None = None  # when it answered: to its answer (a stream: its first event)


@dataclass
class _Answers:
    """Answers of one target not yet written to the store."""

    count: int = 0
    latencies: int = 0
    total_ms: float = 0.0
    last_at: float = 0.0  # time.monotonic() of the last

    def add(self, latency_ms: float | None) -> None:
        self.count, self.last_at = self.count + 1, time.monotonic()
        if latency_ms is not None:
            self.latencies += 1
            self.total_ms += latency_ms

    def ending(self) -> Ending:
        """What these answers write: their mean latency, weighing as many as they are."""
        mean = self.total_ms / self.latencies if self.latencies else None
        return Ending(mean, samples=self.count, answered_s_ago=time.monotonic() - self.last_at)


class RoutingState:
    """The targets' figures, shared through ``store`` (None: this worker's own only)."""

    flush_s = 0.5

    def __init__(self, store: RoutingStore | None = None, health: StoreHealth | None = None) -> None:
        self._store = store
        self._health = health
        self._own = MemoryRouting()
        self._lock = threading.Lock()
        self._rr: defaultdict[str, dict[str, float]] = defaultdict(dict)  # alias → target → current
        self._answers: dict[str, _Answers] = {}  # answers not yet in the store, by target
        self._leases = itertools.count()  # (next() on it is atomic under the GIL)
        self._flush_at = 0.0

    def figures(self, targets: Sequence[str]) -> dict[str, TargetFigures]:
        """Each target's figures: as every worker sees them, or, the store away, as this one does."""
        if self._store is not None:
            try:
                found = self._store.figures(targets)
            except STORE_ERRORS as e:
                self._failed("routing: each worker routes on its own view of the targets", e)
            else:
                self._answered()
                return {target: found.get(target, TargetFigures()) for target in targets}
        return self._own.figures(targets)

    def started(self, target: str, ttl_s: float) -> Lease:
        """A call to ``target`` begins (in this worker's view: the limiter counts it in the
        store); it counts as in flight for at most ``ttl_s``."""
        lease = Lease(target, str(next(self._leases)))
        self._own.started(target, lease.slot, ttl_s)
        return lease

    def renew(self, lease: Lease, ttl_s: float) -> None:
        """The call still runs (a stream): in this worker's view, in flight ``ttl_s`` more."""
        self._own.renew(lease.target, lease.slot, ttl_s)

    def ended(self, lease: Lease, failed: bool = False, cool_s: float = 0.0) -> None:
        """The call ended: its latency (when it answered), failure and cooldown recorded. A
        failure, and a target's first answer in this worker, are written at once; other answers
        are added up and written together every ``flush_s`` rather than one write per call."""
        ending = Ending(lease.latency_ms, failed, cool_s)
        self._own.ended(lease.target, lease.slot, ending)
        if cool_s:
            metrics.TARGET_COOLDOWNS.labels(lease.target).inc()
        if self._store is None:
            return
        now = time.monotonic()
        with self._lock:
            waiting = self._answers.get(lease.target)
            at_once = failed or waiting is None
            if waiting is not None and not at_once:
                waiting.add(lease.latency_ms)
            due: dict[str, _Answers] = {}
            if at_once and waiting is not None:  # the answers before a failure go first
                due[lease.target] = waiting
            if now >= self._flush_at:
                self._flush_at = now + self.flush_s
                due.update(self._answers)
            for target in due:
                self._answers[target] = _Answers()
            self._answers.setdefault(lease.target, _Answers())
        self._write(due)
        if at_once:
            self._record(lease.target, ending)

    def flush(self) -> None:
        """Write the answers still waiting (at close; otherwise the next call's end writes them
        once ``flush_s`` has passed)."""
        with self._lock:
            due, self._answers = self._answers, {target: _Answers() for target in self._answers}
        self._write(due)

    def _write(self, due: dict[str, _Answers]) -> None:
        for target, answers in due.items():
            if answers.count and self._store is not None:
                self._record(target, answers.ending())

    def _record(self, target: str, ending: Ending) -> None:
        assert self._store is not None
        try:
            self._store.record(target, ending)
        except STORE_ERRORS as e:
            what = "a cooldown seen by this worker only" if ending.cool_s else "a call's end not recorded"
            self._failed(f"routing: {what}", e)
        else:
            self._answered()

    def _failed(self, doing: str, error: BaseException) -> None:
        if self._health is not None:
            self._health.failed(doing, error)

    def _answered(self) -> None:
        if self._health is not None:
            self._health.answered()

    def order(
        self, plan: Plan, figures: dict[str, TargetFigures], hash_key: str | None = None
    ) -> list[Candidate]:
        """``plan``'s targets in the order they are tried (cooling ones included: who sends skips
        them)."""
        routing = plan.routing
        strategy = routing.strategy if routing is not None else "failover"
        tiers = sorted({c.priority for c in plan.candidates}, reverse=True)
        ordered: list[Candidate] = []
        for tier in tiers:
            members = [c for c in plan.candidates if c.priority == tier]
            if len(members) > 1:
                members = self._within_tier(plan.alias, strategy, members, figures, hash_key)
            ordered += members
        return ordered

    def _within_tier(
        self,
        alias: str,
        strategy: str,
        members: list[Candidate],
        figures: dict[str, TargetFigures],
        hash_key: str | None,
    ) -> list[Candidate]:
        def of(c: Candidate) -> TargetFigures:
            return figures.get(c.route.alias) or TargetFigures()

        if strategy == "round_robin":
            first = self._smooth_weighted(alias, members)
            return [first, *(c for c in members if c is not first)]
        if strategy == "least_busy":
            return sorted(members, key=lambda c: of(c).in_flight / c.weight)
        if strategy == "least_latency":
            # (not yet measured first; then fastest first)
            return sorted(members, key=lambda c: (of(c).latency_ms is not None, of(c).latency_ms or 0.0))
        if strategy == "consistent_hash" and hash_key is not None:
            return sorted(members, key=lambda c: _rendezvous(hash_key, c), reverse=True)
        return members  # failover

    def _smooth_weighted(self, alias: str, members: Sequence[Candidate]) -> Candidate:
        """nginx's smooth weighted round robin: weights 3:1 give a, a, b, a, a, a, b, a..."""
        with self._lock:
            current = self._rr[alias]
            total = 0
            best: Candidate | None = None
            for c in members:
                name = c.route.alias
                current[name] = current.get(name, 0.0) + c.weight
                total += c.weight
                if best is None or current[name] > current[best.route.alias]:
                    best = c
            assert best is not None
            current[best.route.alias] -= total
            return best


def _rendezvous(key: str, candidate: Candidate) -> float:
    """The candidate's weighted rendezvous score for ``key`` (highest wins)."""
    digest = hashlib.blake2b(f"{key}\x00{candidate.route.alias}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / 2**64  # in (0, 1]
    # Weighted rendezvous (-w / ln u): a target of weight 2 wins twice as many keys.
    return -candidate.weight / math.log(unit) if unit < 1 else float("inf")
