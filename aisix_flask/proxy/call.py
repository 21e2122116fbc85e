"""One proxied request's record, and what its end settles.

The steps of the request path hand each other what they make; the ``Call`` keeps only what the
request's end needs: its usage row (filled in as the request goes), the form to close, the model
whose price and budget apply, what step 10 held and what the upstream made of it. A plain answer
ends when the view returns; a stream ends when its last event is sent or its caller goes away,
and the call finishes then (docs/contract.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from flask import request

from .. import metrics
from ..config import Config
from ..config.aliases import Plan
from ..config.resources import ApiKey, Model
from ..errors import GatewayError
from ..gateway import Gateway
from ..incoming import follow_call, request_id
from ..policy.budgets import Reservation
from ..policy.routing import Lease
from ..providers import conversion_for
from ..stores import STORE_ERRORS
from ..stores.response_owners import Owner
from ..usage.row import UsageRow
from .admission import Held, limit_scopes
from .multipart import Form
from .operation import Operation
from .send import Attempt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Billable:
    """What the upstream call may be billed for, as far as the gateway knows."""

    priced: bool = False  # the upstream answered 2xx (a stream: generated): what it reported costs
    unknown: bool = False  # sent, and no answer says what the upstream made of it


class Call:
    """A proxied request's record and its end; use as ``with Call(...) as call:``.

    ``gateway``, ``config``, ``operation`` and ``key`` are what the request runs with, read-only;
    the rest is what its end settles.
    """

    def __init__(self, gateway: Gateway, config: Config, operation: Operation, key: ApiKey) -> None:
        self.gateway = gateway
        self.config = config  # this request's, start to finish
        self.operation = operation
        self.key = key
        self.row = UsageRow(request_id(), key.display_name, operation.route, request.remote_addr)
        # What the end settles, each given once by the step that makes it:
        self.upload: Form | None = None  # step 2: a form's spooled parts, closed at the end
        self.model: Model | None = None  # step 4: the row named, whose limits and budget apply
        self.priced_by: Model | None = None  # step 11: the target whose price applies
        self.held = Held()  # step 10: slots and windows to give back or charge, a reservation
        self.admitted = False  # step 10 took what ``held`` holds
        # step 11, a routing model: what the target that answered (or was tried last) holds of its
        # own limits and budget, and its call in flight
        self.target_held = Held()
        self.lease: Lease | None = None
        self.billable = Billable()  # step 11
        self._started = time.perf_counter()
        self._stream_ends_it = False
        self._routed = False
        self._finished = False
        self._status_sent = 0
        self._when_finished: list[Callable[[int, UsageRow], None]] = []
        follow_call(self)  # the access log writes this request's line when the call ends

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(error, GatewayError):
            self.row.status, self.row.error_code = error.code, error.error_code
            error.extra_headers = {**self.answer_headers(), **error.extra_headers}
        elif error is not None:
            self.row.status, self.row.error_code = 500, "internal_error"
        if error is not None or not self._stream_ends_it:
            self.finish(self.row.status)

    def resolved(self, plan: Plan) -> None:
        """Step 4 found the plan: its row's limits and budget apply; until a target is tried, the
        row names the first."""
        self.model = self.priced_by = plan.model
        self._routed = plan.routing is not None
        first = plan.candidates[0].route
        self.row.upstream_model, self.row.provider = first.upstream_model, first.model.provider

    def note_attempt(self, attempt: Attempt) -> None:
        """Record what an upstream call came to: its target, its latency, its answer's status,
        and what it may be billed for (the last attempt's is the request's)."""
        route = attempt.route
        self.priced_by = route.model
        self.row.target, self.row.attempts = route.alias, self.row.attempts + 1
        self.row.upstream_model, self.row.provider = route.upstream_model, route.model.provider
        self.row.upstream_latency_ms = attempt.latency_ms
        self.row.status, self.row.error_code = 0, None
        self.billable = Billable()
        if attempt.error is not None:
            self.billable = Billable(unknown=attempt.outcome_unknown)
        elif attempt.answer is not None:
            self.row.status = attempt.answer.status
            if attempt.answer.status >= 400:
                self.row.error_code = attempt.answer.error_code()
            else:
                self.billable = Billable(priced=True)

    def keep_target(self, held: Held, lease: Lease) -> None:
        """The routing target now tried holds ``held`` and ``lease`` until the call ends (or
        until it is left for another target: ``leave_target``)."""
        self.target_held, self.lease = held, lease

    def leave_target(self, cool_s: float) -> None:
        """The target tried last failed and another is tried: what it held is given back (no
        token was counted, nothing was billed), and its failure recorded."""
        held, self.target_held = self.target_held, Held()
        self.gateway.limiter.finish(held.limits)
        self.gateway.budgets.count(held.reservation, (), None, self.row.created_at)
        self.end_lease(True, cool_s)

    def note_first_event(self, latency_ms: float) -> None:
        """A stream's first event came ``latency_ms`` after it was sent: its target's latency."""
        if self.lease is not None and self.lease.latency_ms is None:
            self.lease.latency_ms = latency_ms

    def end_lease(self, failed: bool, cool_s: float = 0.0) -> None:
        """The call to the target is over (or failed): recorded, and it no longer counts as in
        flight. The call's end does it if nobody did before."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self.gateway.routing.ended(lease, failed, cool_s)

    def note_created(self, document: dict[str, Any]) -> None:
        """An answer, or one of its events: when it created something the provider keeps (a stored
        response), record that this caller created it through the target that answered, so that
        later calls naming it go there, and only for this caller. A translated answer created
        nothing at any provider."""
        creates = self.operation.creates
        found = creates(document) if creates is not None else None
        owners, target = self.gateway.response_owners, self.row.target
        if not found or owners is None or target is None:
            return
        plan = self.config.router.resolve(target)
        adapter = plan.candidates[0].route.provider_key.adapter if plan is not None else ""
        if not (adapter and conversion_for(adapter, self.operation.speaks).native):
            return
        try:
            owners.remember(found, Owner(self.key.display_name, target))
        except STORE_ERRORS as e:
            self.gateway.limiter.health.failed("responses: who created a response not recorded", e)

    def hand_end_to_stream(self) -> None:
        """The answer is a stream: the call finishes when it ends (``finish``), not at exit."""
        self._stream_ends_it = True

    def when_finished(self, callback: Callable[[int, UsageRow], None]) -> None:
        """Call ``callback(status_sent, row)`` when the call has finished (now, if it has)."""
        if self._finished:
            callback(self._status_sent, self.row)
        else:
            self._when_finished.append(callback)

    def answer_headers(self) -> dict[str, str]:
        """The headers the gateway adds to this call's answer: x-ratelimit-*, and for a routing
        model x-aisix-target (the target that answered, or was tried last) and x-aisix-attempts."""
        headers = self.rate_limit_headers()
        if self._routed and self.row.target is not None:
            headers = {
                **headers,
                "x-aisix-target": self.row.target,
                "x-aisix-attempts": str(self.row.attempts),
            }
        return headers

    def rate_limit_headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers of this call's answer: as its admission saw the windows, or,
        not admitted, as they are now (for a limited key or model: none otherwise)."""
        limits = self.held.limits
        if limits.headers or limits.store_failed:
            return limits.headers  # (a store that just failed is not asked again)
        scopes = limit_scopes(self.key, self.model)
        if not any(
            scope.limit.rpm or scope.limit.rpd or scope.limit.tpm or scope.limit.tpd for scope in scopes
        ):
            return {}
        return self.gateway.limiter.headers(scopes)

    def renew_slots(self, ttl_s: float) -> None:
        """A stream still running keeps its concurrency slots for ``ttl_s`` more (and counts as in
        flight at its routing target)."""
        self.gateway.limiter.renew(self.held.limits, ttl_s)
        self.gateway.limiter.renew(self.target_held.limits, ttl_s)
        if self.lease is not None:
            self.gateway.routing.renew(self.lease, ttl_s)

    def finish(
        self, status_sent: int, billable: Billable | None = None, upstream_failed: bool = False
    ) -> None:
        """Record the call, once: count its tokens and give back its slots, price it, queue its
        row, count it in the metrics, then tell who waits for its end. ``status_sent`` is the HTTP
        status the caller got (a stream's is 200 whatever its row says); ``billable``, what the
        stream that ended it says the upstream may be billed for; ``upstream_failed``, that the
        stream's upstream cut it or went silent (its routing target cools down)."""
        if self._finished:
            return
        self._finished, self._status_sent = True, status_sent
        billable = billable or self.billable
        if self.upload is not None:
            self.upload.close()
        row, held, target_held, model, priced_by = (
            self.row,
            self.held,
            self.target_held,
            self.model,
            self.priced_by,
        )
        row.latency_ms = (time.perf_counter() - self._started) * 1000
        self.gateway.limiter.finish(held.limits, target_held.limits, tokens=row.total_tokens)
        self.end_lease(upstream_failed, self.config.settings.upstream.cooldown_s if upstream_failed else 0.0)
        # A routing model's price is the target's that answered (or was tried last): never another's.
        price_before = target_held.price_before if self._routed else held.price_before
        if billable.priced and priced_by is not None and priced_by.pricing is not None:
            row.cost_usd = priced_by.pricing.cost(row)
        if billable.unknown and price_before and (row.cost_usd or 0) < price_before:
            # Sent, and no answer says what came of all of it (a timeout, a stream cut after some
            # of its images, a hang-up, a 2xx that cannot be read): the upstream may have made and
            # billed what was asked for, at the price known up front. (A price known only from the
            # answer is not guessed.)
            row.cost_usd = price_before
        reserved = Reservation(
            held.reservation.charges + target_held.reservation.charges,
            held.reservation.amount + target_held.reservation.amount,
        )
        if reserved.charges and billable.priced and row.cost_usd is None:
            log.warning(
                "request %s to model %r under a budget could not be priced (the upstream reported "
                "no usage, or usage its pricing has no price for): it counts nothing",
                row.request_id,
                row.model,
            )
        if model is not None:
            spenders = [("key", self.key.display_name), ("model", model.display_name)]
            if priced_by is not None and priced_by is not model:  # the routing target that answered
                spenders.append(("model", priced_by.display_name))
            self.gateway.budgets.count(reserved, spenders, row.cost_usd, row.created_at)
        self.gateway.ledger.record(row)
        metrics.observe(row, model.display_name if model else "")
        for callback in self._when_finished:
            callback(status_sent, row)
