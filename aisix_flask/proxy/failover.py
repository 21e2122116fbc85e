"""Step 11 for every route: the targets tried in turn, each attempt judged by the one table of
``tries`` (README, "Routing and failover"). A direct model is a plan of one target: it gets the
same-target tries again when nothing was sent, and nothing else.

A routing model's targets are read from the shared figures once (which cool down, how busy and
fast each is), ordered by its strategy, and tried in that order: a cooling target, or one whose
own limits or budget refuse the request, is skipped. Each try holds an in-flight slot at its
target; the call keeps the last one's until it ends (a stream: until its last event).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from flask import request

from .. import metrics
from ..config.aliases import Candidate, Plan
from ..errors import GatewayError, NoTargetAvailable
from ..eventlog import emit
from .admission import TargetRefused, admit, admit_target
from .call import Call
from .send import Attempt, Payload, send
from .tries import Next, after
from .upstream import Timeout


@dataclass(frozen=True)
class Targets:
    """Where step 11 may send: the plan, its targets that pass steps 6 to 8, and each one's timeout."""

    plan: Plan
    eligible: list[Candidate]
    timeout_for: dict[str, Timeout]

    @property
    def slot_ttl_s(self) -> float:
        """How long the request may hold a concurrency slot: its slowest target's budget."""
        return max(self.timeout_for[c.route.alias].slot_ttl_s for c in self.eligible)


def send_tries(
    call: Call, targets: Targets, body: dict[str, Any], slot_ttl_s: float, streamed: bool = False
) -> Attempt:
    """Steps 10 and 11: take the limits and budgets, and send ``body`` to the eligible targets in
    the plan's order until one answers or a failure must end the request; the attempt that ends
    it (an error: raised). Slots are held for at most ``slot_ttl_s`` (a stream renews them)."""
    plan = targets.plan
    routing = plan.routing
    if routing is None:  # a direct model: its own limits, then its one target
        first = targets.eligible[0]
        admit(call, body, first.route.model, slot_ttl_s)  # 10
        return _ended(_on_target(call, plan, first, body, targets.timeout_for, streamed)[0])
    state = call.gateway.routing
    figures = state.figures([c.route.alias for c in targets.eligible])
    ordered = [c for c in state.order(plan, figures, _hash_key(call, plan)) if c in targets.eligible]
    ready = [c for c in ordered if not figures[c.route.alias].cooling_s]
    if not ready:
        if routing.when_all_unavailable == "fail":
            wait = max(1, round(min(figures[c.route.alias].cooling_s for c in ordered)))
            raise NoTargetAvailable(
                f"Every target of the model '{plan.alias}' is cooling down after a failure; "
                f"try again in {wait} s.",
                headers={"Retry-After": str(wait)},
            )
        ready = ordered  # try_anyway
    attempt: Attempt | None = None
    refusals: list[GatewayError] = []
    tried = 0
    for candidate in ready:
        alias = candidate.route.alias
        if routing.max_fallbacks is not None and tried > routing.max_fallbacks:
            break
        try:  # 10 at this target (the first also takes the caller's and the routing model's)
            held = admit_target(call, candidate.route.model, body, slot_ttl_s)
        except TargetRefused as skipped:  # its own limits or budget: skipped
            refusals.append(skipped.refusal)
            continue
        tried += 1
        call.keep_target(held, state.started(alias, slot_ttl_s))
        attempt, verdict = _on_target(call, plan, candidate, body, targets.timeout_for, streamed)
        if verdict.next_target:  # failed, and another target may answer: this one is left
            call.leave_target(verdict.cool_s or 0.0)
            continue
        if verdict.cool_s is not None:  # failed for good: the target cools now, the call ends
            call.end_lease(True, verdict.cool_s)
        elif call.lease is not None and not streamed:  # (a stream's: to its first event)
            call.lease.latency_ms = attempt.latency_ms
        break
    if attempt is None:  # every target was refused by its own limits or budget
        raise refusals[0]
    return _ended(attempt)


def _on_target(
    call: Call,
    plan: Plan,
    candidate: Candidate,
    body: dict[str, Any],
    timeout_for: dict[str, Timeout],
    streamed: bool,
) -> tuple[Attempt, Next]:
    """Send to one target, again while nothing was sent (``retries``, after a jittered pause);
    the last attempt and what may follow it."""
    settings, routing = call.config.settings.upstream, plan.routing
    retries = routing.retries if routing is not None and routing.retries is not None else settings.retries
    for tried in range(retries + 1):
        if tried:
            time.sleep(random.uniform(0.05, 0.25))  # jittered: not every worker at once
        attempt = _attempt(call, candidate, body, timeout_for[candidate.route.alias], streamed, plan)
        verdict = after(attempt, routing, settings.cooldown_s)
        if not verdict.same_target:
            break
    return attempt, verdict


def _ended(attempt: Attempt) -> Attempt:
    """The attempt that ends the request; raised when it is an error."""
    if attempt.error is not None:
        raise attempt.error
    return attempt


def _attempt(
    call: Call, candidate: Candidate, body: dict[str, Any], timeout: Timeout, streamed: bool, plan: Plan
) -> Attempt:
    alias = candidate.route.alias
    attempt = send(
        call.operation,
        Payload(
            candidate.route,
            body,
            call.upload,
            call.row.model or "",
            tuple(
                (name, request.headers[name]) for name in call.operation.forwards if name in request.headers
            ),
        ),
        timeout,
        call.config.settings.upstream,
        call.row.request_id,
        streamed,
    )
    call.note_attempt(attempt)
    failed = attempt.error is not None or (attempt.answer is not None and attempt.answer.status >= 400)
    outcome = _outcome(attempt) if failed else "ok"
    metrics.UPSTREAM_ATTEMPTS.labels(alias, outcome).inc()
    if failed and plan.routing is not None:
        emit(
            "upstream_attempt",
            logging.WARNING,
            request_id=call.row.request_id,
            model=call.row.model,
            target=alias,
            attempt=call.row.attempts,
            outcome=outcome,
            status=attempt.status,
            error_code=_error_code(attempt),
            latency_ms=round(attempt.latency_ms, 2),
        )
    return attempt


def _error_code(attempt: Attempt) -> str | None:
    if attempt.error is not None:
        return attempt.error.error_code
    return attempt.answer.error_code() if attempt.answer is not None else None


def _outcome(attempt: Attempt) -> str:
    """A bounded label for a failed attempt."""
    if attempt.sent_nothing:
        return "not_sent"
    if attempt.status is None:
        return "lost_after_sending"
    return f"http_{attempt.status}"


def _hash_key(call: Call, plan: Plan) -> str | None:
    """What consistent_hash keys on for this request: the first source the request has."""
    routing = plan.routing
    if routing is None or routing.strategy != "consistent_hash":
        return None
    for source in routing.hash_on:
        if source.type == "header" and source.name and request.headers.get(source.name):
            return f"h:{request.headers[source.name]}"
        if source.type == "api_key":
            return f"k:{call.key.display_name}"
    return None
