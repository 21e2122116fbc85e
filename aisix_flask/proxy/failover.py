"""Step 11 for every route: the targets tried in turn, each attempt judged by the one table of
``tries`` (README, "Routing and failover"). A direct model is a plan of one target: it gets the
same-target tries again when nothing was sent, and nothing else."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from flask import request

from .. import metrics
from ..config.aliases import Candidate, Plan
from ..errors import NoTargetAvailable
from ..eventlog import emit
from .call import Call
from .send import Attempt, Payload, send
from .tries import after
from .upstream import Timeout


def send_tries(
    call: Call,
    plan: Plan,
    candidates: list[Candidate],
    body: dict[str, Any],
    timeout_for: dict[str, Timeout],
    streamed: bool = False,
) -> Attempt:
    """Send ``body`` to the eligible ``candidates`` in the plan's order until one answers or a
    failure must end the request; the attempt that ends it (an error: raised)."""
    settings = call.config.settings.upstream
    routing, state = plan.routing, call.gateway.routing
    retries = routing.retries if routing is not None and routing.retries is not None else settings.retries
    ordered = candidates
    if routing is not None:
        ordered = [c for c in state.order(plan, _hash_key(call, plan)) if c in candidates]
        ready = [c for c in ordered if not state.cooling_s(c.route.alias)]
        if not ready and routing.when_all_unavailable == "fail":
            wait = min(state.cooling_s(c.route.alias) for c in ordered)
            raise NoTargetAvailable(
                f"Every target of the model '{plan.alias}' is cooling down after a failure; "
                f"try again in {max(1, round(wait))} s.",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        ordered = ready or ordered
        if routing.max_fallbacks is not None:
            ordered = ordered[: routing.max_fallbacks + 1]
    attempt: Attempt | None = None
    for candidate in ordered:
        alias = candidate.route.alias
        for tried in range(retries + 1):
            if tried:
                time.sleep(random.uniform(0.05, 0.25))  # jittered: not every worker at once
            attempt = _attempt(call, candidate, body, timeout_for[alias], streamed, routing is not None)
            verdict = after(attempt, routing, settings.cooldown_s)
            if routing is not None and verdict.cool_s:
                state.cool(alias, verdict.cool_s)
            if not verdict.same_target:
                break
        if routing is None or not verdict.next_target:
            break
    assert attempt is not None  # there is at least one eligible candidate
    if attempt.error is not None:
        raise attempt.error
    return attempt


def _attempt(
    call: Call, candidate: Candidate, body: dict[str, Any], timeout: Timeout, streamed: bool, routed: bool
) -> Attempt:
    alias = candidate.route.alias
    state = call.gateway.routing if routed else None  # what orders a routing model's targets
    if state is not None:
        state.started(alias)
    attempt = send(
        call.operation,
        Payload(candidate.route, body, call.upload),
        timeout,
        call.config.settings.upstream,
        call.row.request_id,
        streamed,
    )
    if state is not None:
        answered = attempt.status is not None and attempt.status < 500
        state.ended(alias, attempt.latency_ms if answered else None)
    call.note_attempt(attempt)
    failed = attempt.error is not None or (attempt.answer is not None and attempt.answer.status >= 400)
    outcome = _outcome(attempt) if failed else "ok"
    metrics.UPSTREAM_ATTEMPTS.labels(alias, outcome).inc()
    if failed and routed:
        emit(
            "upstream_attempt",
            logging.WARNING,
            request_id=call.row.request_id,
            model=call.row.model,
            target=alias,
            attempt=call.row.attempts,
            outcome=outcome,
            status=attempt.status,
            latency_ms=round(attempt.latency_ms, 2),
        )
    return attempt


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
