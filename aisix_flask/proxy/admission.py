"""Step 10: what a request takes before it is sent, or the answer that refuses it.

It takes a turn in every rate-limit window of its caller key and its model row, and their
concurrency slots (429 when one is full); then its budgets reserve what it is known to cost (429
when one has not enough left). A request under a budget whose price the config cannot tell is
refused (400): it would count nothing. Whatever is taken is given back, or counted, when the call
ends (``Call.finish``).

A routing model's target is a model row of its own, which callers may also name directly: before
a target is tried, its own limits and budget are taken the same way (``admit_target``); a target
they refuse is skipped (README, "Routing and failover").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.resources import ApiKey, Model
from ..errors import GatewayError, PriceUnknown, RateLimited
from ..jsonvalues import whole_number
from ..policy.budgets import Budgets, BudgetScope, Reservation
from ..policy.limits import Admission, Group, Scope
from ..stores.routing import flight_key
from .operation import Operation

if TYPE_CHECKING:
    from .call import Call


@dataclass(frozen=True)
class Held:
    """What step 10 took for a request: concurrency slots and token windows (given back, or
    charged, at its end), its budgets' reservation, and its price where known before the call."""

    limits: Admission = field(default_factory=Admission)
    reservation: Reservation = field(default_factory=Reservation)
    price_before: float | None = None


def limit_scopes(key: ApiKey, model: Model | None) -> list[Scope]:
    """The caller key's limits and the model row's (a wildcard row counts as one model)."""
    scopes = [Scope("key", key.display_name, key.rate_limit)]
    if model is not None:
        scopes.append(Scope("model", model.display_name, model.rate_limit))
    return scopes


def admit(call: Call, body: dict[str, Any], priced_by: Model, slot_ttl_s: float) -> None:
    """Take the rate limits and slots of the caller key and the model it named, then reserve
    their budgets at ``priced_by``'s price, or raise the refusal. What is taken is the call's from
    the moment it is taken (``call.held``): whatever happens next, even a refusal by a budget, its
    end gives it back (and its answer carries the limits' headers)."""
    model = call.model
    assert model is not None  # step 4 ran
    limits = call.gateway.limiter.admit(limit_scopes(call.key, model), slot_ttl_s)
    call.held, call.admitted = Held(limits), True
    reservation, price = reserve(call.gateway.budgets, call.operation, caller_budgets(call), priced_by, body)
    call.held = Held(limits, reservation, price)


def caller_budgets(call: Call) -> list[BudgetScope]:
    """The budgets of the caller key and of the model it named."""
    key, model = call.key, call.model
    assert model is not None  # step 4 ran
    scopes = [BudgetScope("key", key.display_name, key.budget)] if key.budget else []
    if model.budget:
        scopes.append(BudgetScope("model", model.display_name, model.budget))
    return scopes


class TargetRefused(Exception):
    """A routing target's own limits or budget refuse the request, or it cannot be priced under
    the caller's budgets: it is skipped."""

    def __init__(self, refusal: GatewayError) -> None:
        super().__init__(refusal.description)
        self.refusal = refusal


def admit_target(call: Call, target: Model, body: dict[str, Any], slot_ttl_s: float) -> Held:
    """Step 10 at a routing model's target: its own budget, rate limits and slots, and a slot
    that counts its calls in flight. At the first target tried, the caller key's and the routing
    model's limits are taken in the same turn at the store, and their budgets reserved at this
    target's price (``call.held``, as ``admit`` does): their refusal is the request's. The
    target's own refusal is ``TargetRefused``, and leaves nothing taken: its budget is reserved
    first, and a request the caller's budgets could not price at it is skipped before anything
    is counted. What the target holds is given back, or counted, by whoever took it."""
    limiter, budgets, operation, model = (
        call.gateway.limiter,
        call.gateway.budgets,
        call.operation,
        call.model,
    )
    assert model is not None  # step 4 ran
    first = not call.admitted
    if first and (scopes := caller_budgets(call)) and price_before(operation, target, body) is None:
        raise TargetRefused(unpriceable(operation, target, body, scopes[0]))
    own_budget = [BudgetScope("model", target.display_name, target.budget)] if target.budget else []
    try:
        reservation, price = reserve(budgets, operation, own_budget, target, body)
    except GatewayError as refusal:
        raise TargetRefused(refusal) from None
    own = Group([Scope("model", target.display_name, target.rate_limit)], (flight_key(target.display_name),))
    try:
        if first:
            caller, limits = limiter.admit_together([Group(limit_scopes(call.key, model)), own], slot_ttl_s)
        else:
            [limits] = limiter.admit_together([own], slot_ttl_s)
    except RateLimited as refusal:
        budgets.count(reservation, (), None, call.row.created_at)  # given back
        if first and refusal.refused_group == 0:
            raise  # the caller key's or the routing model's own limit
        raise TargetRefused(refusal) from None
    held = Held(limits, reservation, price)
    if first:
        try:
            call.held, call.admitted = Held(caller), True
            caller_reservation, caller_price = reserve(budgets, operation, caller_budgets(call), target, body)
            call.held = Held(caller, caller_reservation, caller_price)
        except BaseException:  # the request's refusal: the target's holding is given back now
            limiter.finish(limits)
            budgets.count(reservation, (), None, call.row.created_at)
            raise
    return held


def price_before(operation: Operation, priced_by: Model, body: dict[str, Any]) -> float | None:
    """What the request is known to cost before its call at ``priced_by``'s prices (None: only
    the answer tells, or there is no pricing)."""
    if priced_by.pricing is None:
        return None
    return priced_by.pricing.known_before(
        whole_number(body.get("n")),
        body.get("size"),
        body.get("quality"),
        operation.token_kinds,
        operation.search_units,
    )


def reserve(
    budgets: Budgets,
    operation: Operation,
    scopes: list[BudgetScope],
    priced_by: Model,
    body: dict[str, Any],
) -> tuple[Reservation, float | None]:
    """The reservation, on the budgets of ``scopes``, of what the request is known to cost at
    ``priced_by``'s prices, and that price (None: only the answer tells, or there is no pricing)."""
    price = price_before(operation, priced_by, body)
    if not scopes:
        return Reservation(), price
    if price is None:
        raise unpriceable(operation, priced_by, body, scopes[0])
    return budgets.reserve(scopes, price), price


def unpriceable(operation: Operation, model: Model, body: dict[str, Any], scope: BudgetScope) -> PriceUnknown:
    """Why a request under a budget cannot be priced before its call (and so cannot be counted):
    no pricing, token prices that miss a kind the route's answers report, only a search-unit price
    for a route that reports none, or no per-image price for the size and quality asked."""
    pricing = model.pricing
    reason = f"and {scope.label} has a budget: a request that cannot be priced cannot be counted against it."
    if pricing is None:
        return PriceUnknown(
            f"The model '{model.display_name}' has no pricing, {reason} Add a pricing block to "
            f"the model in the gateway config.",
            param="model",
        )
    if pricing.per_million_tokens:
        kinds = " or ".join("/".join(kinds) for kinds in operation.token_kinds)
        return PriceUnknown(
            f"The model '{model.display_name}' has no token price for every kind of token "
            f"{operation.what} answers report ({kinds}), {reason}",
            param="model",
        )
    if not pricing.per_image:
        return PriceUnknown(
            f"The model '{model.display_name}' has only a price per search unit, which "
            f"{operation.what} answers do not report, {reason}",
            param="model",
        )
    size = body.get("size") or pricing.default_size
    return PriceUnknown(
        f"The model '{model.display_name}' has no per-image price for size '{size}' and quality "
        f"'{body.get('quality') or pricing.default_quality}', {reason}",
        param="quality" if size in pricing.per_image else "size",
    )
