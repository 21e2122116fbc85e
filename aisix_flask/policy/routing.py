"""The order in which a routing model's targets are tried, and what that order reads: which
targets cool down after a failure, how many calls each has in flight, how fast each answered.

Targets are tried tier by tier (``priority``, highest first) and, within a tier, in the order the
strategy gives (README, "Routing and failover"):

- ``failover``: the configured order;
- ``round_robin``: smooth weighted round robin (nginx's) picks the first, the rest follow in order;
- ``least_busy``: fewest calls in flight per unit of weight first;
- ``least_latency``: targets with no figure yet first (so they get one), then the lowest moving
  average of recent latency (a stream's: to its first event);
- ``consistent_hash``: rendezvous hashing of the request's key (a header, else the caller key):
  the same key keeps landing on the same target while it is eligible.

This state is each worker process's own: a target cooled by one worker is cooled in that worker.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

from ..config.aliases import Candidate, Plan

LATENCY_WEIGHT = 0.3  # of a new figure in the moving average


class RoutingState:
    """One process's view of the targets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cool_until: dict[str, float] = {}
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._latency_ms: dict[str, float] = {}
        self._rr: defaultdict[str, dict[str, float]] = defaultdict(dict)  # alias → target → current

    def cool(self, target: str, seconds: float) -> None:
        """Skip ``target`` for ``seconds`` (a longer cooldown already running stays)."""
        until = time.monotonic() + seconds
        with self._lock:
            if until > self._cool_until.get(target, 0.0):
                self._cool_until[target] = until

    def cooling_s(self, target: str) -> float:
        """How long ``target`` is still skipped (0: it is not)."""
        return max(0.0, self._cool_until.get(target, 0.0) - time.monotonic())

    def started(self, target: str) -> None:
        with self._lock:
            self._in_flight[target] += 1

    def ended(self, target: str, latency_ms: float | None) -> None:
        """An attempt on ``target`` ended; ``latency_ms`` when it answered (its first event)."""
        with self._lock:
            self._in_flight[target] = max(0, self._in_flight[target] - 1)
            if latency_ms is not None:
                before = self._latency_ms.get(target)
                self._latency_ms[target] = (
                    latency_ms if before is None else before + LATENCY_WEIGHT * (latency_ms - before)
                )

    def order(self, plan: Plan, hash_key: str | None) -> list[Candidate]:
        """``plan``'s targets in the order they are tried (cooling ones included: who sends skips
        them)."""
        routing = plan.routing
        strategy = routing.strategy if routing is not None else "failover"
        tiers = sorted({c.priority for c in plan.candidates}, reverse=True)
        ordered: list[Candidate] = []
        for tier in tiers:
            members = [c for c in plan.candidates if c.priority == tier]
            ordered += (
                self._within_tier(plan.alias, strategy, members, hash_key) if len(members) > 1 else members
            )
        return ordered

    def _within_tier(
        self, alias: str, strategy: str, members: list[Candidate], hash_key: str | None
    ) -> list[Candidate]:
        if strategy == "round_robin":
            first = self._smooth_weighted(alias, members)
            return [first, *(c for c in members if c is not first)]
        if strategy == "least_busy":
            with self._lock:
                return sorted(members, key=lambda c: self._in_flight.get(c.route.alias, 0) / c.weight)
        if strategy == "least_latency":
            with self._lock:
                known = self._latency_ms
                return sorted(members, key=lambda c: (c.route.alias in known, known.get(c.route.alias, 0.0)))
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
