"""The request path every proxied route runs: docs/contract.md's steps 1 to 13, one per line.

A route module declares its ``Operation`` (what differs) and calls ``handle`` with it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Response, request

from ..adapters import ADAPTERS, supporting
from ..config.aliases import Route
from ..errors import (
    ModelNotFound,
    NotImplementedOperation,
    PermissionDenied,
    PriceUnknown,
    ProviderUnavailable,
    UnsupportedProvider,
    UpstreamBadResponse,
    UpstreamError,
)
from ..gateway import current
from ..jsonvalues import whole_number
from ..policy.auth import authenticate
from ..policy.budgets import BudgetScope
from ..policy.guardrails import check_input, check_output
from ..policy.limits import Scope
from . import upstream
from .body import read_json_object
from .call import Call
from .endpoints import endpoint_url
from .multipart import read_form
from .operation import Operation
from .outcomes import Answer, interpret
from .schema import validate
from .streaming import refuse_idempotency_key, stream_response, stream_slot_lease
from .upstream import Timeout


def handle(operation: Operation) -> Response:
    """Run ``operation`` for this request: check the caller and its policy, then forward once."""
    gateway = current()
    config = gateway.config()  # this request's config, start to finish
    key = authenticate(config.api_keys, request.headers)  # 1
    with Call(operation, gateway, config, key) as call:  # 13: the call owns its row (see Call)
        body = read_body(call)  # 2
        call.row.note_request(body)
        validate(operation.form_schema if call.upload else operation.schema, body)  # 3
        route = call.route = resolve(call, body["model"])  # 4
        if not key.may_use(route.alias):  # 5
            raise PermissionDenied(f"This API key may not use the model '{route.alias}'.")
        require_provider(operation, route)  # 6
        require_adapter(operation, route)  # 7
        require_credential(route)  # 8
        body = guard_input(call, body)  # 9
        if operation.streaming is not None and body.get("stream") is True:
            refuse_idempotency_key()
            response = stream(call, body)  # 10-12, the answer relayed as it arrives
        else:  # 10-12, at most once per Idempotency-Key: a repeat gets the stored answer
            response = gateway.idempotency.run(
                request.headers,
                key.display_name,
                body,
                call.row,
                lambda: forward(call, body),
                config.settings.idempotency,
                call.timeout.slot_ttl_s,
                digest=call.upload.digest if call.upload else None,
            )
        response.headers.update(call.rate_limit_headers())  # x-ratelimit-*
        return response


def read_body(call: Call) -> dict[str, Any]:
    """The body as a JSON object; for a route that takes forms, multipart/form-data too (its text
    fields as values, its files described, its parts kept for sending on)."""
    limit = call.config.settings.request_body_limit_bytes
    if call.operation.form_schema is not None and request.mimetype == "multipart/form-data":
        call.upload = read_form(limit)
        return call.upload.fields()
    return read_json_object(limit)


def resolve(call: Call, alias: str) -> Route:
    """The configured route for ``alias``, or 404; the call learns its upstream and timeout."""
    route = call.config.router.resolve(alias)
    if route is None:
        raise ModelNotFound(f"The model '{alias}' does not exist on this gateway.", param="model")
    call.row.upstream_model, call.row.provider = route.upstream_model, route.model.provider
    settings = call.config.settings.upstream
    call.timeout = Timeout(settings.connect_timeout_s, route.model.timeout_s or settings.timeout_s)
    return route


def require_provider(operation: Operation, route: Route) -> None:
    """A route that is one provider's (images: OpenAI's) refuses others before anything is spent."""
    if operation.providers is not None and route.model.provider not in operation.providers:
        allowed = ", ".join(f"'{p}'" for p in sorted(operation.providers))
        raise UnsupportedProvider(
            f"The model '{route.alias}' is configured with provider '{route.model.provider}'; "
            f"{operation.route} accepts only models whose provider is {allowed}. Check the provider "
            f"of this model in the gateway config.",
            param="model",
        )


def require_adapter(operation: Operation, route: Route) -> None:
    """The provider key's adapter must implement the operation, else 501."""
    adapter = route.provider_key.adapter
    if not ADAPTERS[adapter].implements(operation.capability):
        raise NotImplementedOperation(
            f"The provider key '{route.provider_key.display_name}' of model '{route.alias}' uses "
            f"the '{adapter}' adapter, which does not implement {operation.what}. This is a "
            f"provider capability issue: check that the model's provider key uses an adapter "
            f"that supports {operation.what} (adapter: {', '.join(supporting(operation.capability))})."
        )


def require_credential(route: Route) -> None:
    """An upstream credential must be configured, else 503."""
    if not route.provider_key.api_key:
        raise ProviderUnavailable(
            f"The provider key '{route.provider_key.display_name}' has no API key configured; "
            f"check its api_key (and the environment variable it names)."
        )


def guard_input(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    """The input guardrails over the operation's texts; the body with masked text put back."""
    guardrails = call.config.input_guardrails
    if not guardrails:
        return body
    texts = call.operation.texts
    verdict = check_input(guardrails, texts.read(body))
    call.row.note_guardrails(verdict.masked, verdict.flagged)
    return texts.write(body, verdict.texts) if verdict.masked else body


def limit_scopes(call: Call) -> list[Scope]:
    """The caller key's and the model row's limits (wildcard rows count as one model)."""
    model = call.route.model
    return [
        Scope("key", call.key.display_name, call.key.rate_limit),
        Scope("model", model.display_name, model.rate_limit),
    ]


def admit(call: Call, body: dict[str, Any], slot_ttl_s: float) -> None:
    """Step 10: the rate limits and concurrency slots, then the budgets (what the request is known
    to cost is reserved). Whatever is taken is given back, or counted, when the call finishes."""
    call.admission = call.gateway.limiter.admit(limit_scopes(call), slot_ttl_s)
    key, model = call.key, call.route.model
    pricing = model.pricing
    if pricing is not None:
        call.price_before = pricing.known_before(
            whole_number(body.get("n")),
            body.get("size"),
            body.get("quality"),
            call.operation.token_kinds,
            call.operation.search_units,
        )
    scopes = [BudgetScope("key", key.display_name, key.budget)] if key.budget else []
    if model.budget:
        scopes.append(BudgetScope("model", model.display_name, model.budget))
    if scopes:
        call.reservation = call.gateway.budgets.reserve(scopes, price_known_before(call, body, scopes[0]))


def price_known_before(call: Call, body: dict[str, Any], scope: BudgetScope) -> float:
    """What a request under a budget will cost as far as it is known before the call: n images at
    a per-image price, or 0 for a price only the answer tells (tokens). A request whose price the
    config cannot tell is refused: under a budget it would be free."""
    if call.price_before is not None:
        return call.price_before
    model, pricing = call.route.model, call.route.model.pricing
    unpriceable = (
        f"and {scope.label} has a budget: a request that cannot be priced cannot be counted against it."
    )
    if pricing is None:
        raise PriceUnknown(
            f"The model '{model.display_name}' has no pricing, {unpriceable} Add a pricing block to "
            f"the model in the gateway config.",
            param="model",
        )
    if pricing.per_million_tokens:
        kinds = " or ".join("/".join(kinds) for kinds in call.operation.token_kinds)
        raise PriceUnknown(
            f"The model '{model.display_name}' has no token price for every kind of token "
            f"{call.operation.what} answers report ({kinds}), {unpriceable}",
            param="model",
        )
    if not pricing.per_image:
        raise PriceUnknown(
            f"The model '{model.display_name}' has only a price per search unit, which "
            f"{call.operation.what} answers do not report, {unpriceable}",
            param="model",
        )
    size = body.get("size") or pricing.default_size
    raise PriceUnknown(
        f"The model '{model.display_name}' has no per-image price for size '{size}' and quality "
        f"'{body.get('quality') or pricing.default_quality}', {unpriceable}",
        param="quality" if size in pricing.per_image else "size",
    )


def forward(call: Call, body: dict[str, Any]) -> Response:
    """Steps 10 to 12: the rate limits and budgets, the upstream call, the answer as it came."""
    admit(call, body, call.timeout.slot_ttl_s)  # 10
    return answered(call, send(call, body))  # 11, 12


def stream(call: Call, body: dict[str, Any]) -> Response:
    """Steps 10 to 12 of a stream: the limits, the upstream call, its events relayed."""
    outgoing, hide_usage = call.operation.streaming.prepare(body)
    lease = stream_slot_lease(call.config.settings.stream_keepalive_s, call.timeout)
    call.slot_lease = (time.monotonic(), lease)  # the relay renews it from here
    admit(call, body, lease)  # 10
    opened = send(call, outgoing, streamed=True)  # 11
    if isinstance(opened, Answer):  # an upstream that answered JSON after all
        return answered(call, opened)
    return stream_response(call, opened, hide_usage)  # 12


def answered(call: Call, answer: Answer) -> Response:
    """Record what a whole answer says, check its text, and pass it on as it is."""
    row = call.row
    row.status = answer.status
    if answer.status >= 400:
        row.error_code = answer.error_code()
    else:
        call.priced = True
        call.operation.note_answer(row, answer.document)
        guard_output(call, answer.document)
    answer.document = None  # a large answer's parsed copy is not needed to send its bytes
    return passthrough(answer)  # 12


def send(call: Call, body: dict[str, Any], streamed: bool = False) -> Any:
    """Send the body once, with only ``model`` rewritten, and interpret the answer: an Answer,
    or (``streamed``, when the upstream streams) the open response."""
    route = call.route
    payload, content_type = encode(call, body)
    url = endpoint_url(route.provider_key.api_base, call.operation.upstream_path)
    proxies, verify = upstream.route_settings(url, route.provider_key, call.config.settings.upstream)
    call.upstream_started = time.perf_counter()
    try:
        answer = upstream.post(
            url,
            payload,
            key=route.provider_key,
            request_id=call.row.request_id,
            timeout=(call.timeout.connect_s, call.timeout.read_s),
            proxies=proxies,
            verify=verify,
            stream=streamed,
            content_type=content_type,
        )
    except UpstreamError as e:
        call.outcome_unknown = not e.should_retry  # it may have been sent and acted on
        raise
    finally:
        call.row.upstream_latency_ms = (time.perf_counter() - call.upstream_started) * 1000
    if not isinstance(answer, Answer):
        return answer
    try:
        return interpret(answer, route.provider_key)
    except UpstreamBadResponse:
        # A 2xx the gateway cannot read: the upstream did the work, and may bill it.
        call.outcome_unknown = 200 <= answer.status < 300
        raise


def encode(call: Call, body: dict[str, Any]) -> tuple[Any, str]:
    """What to send and its Content-Type: the body with only ``model`` rewritten (and masked text);
    a form's parts as they came, those fields' text replaced."""
    model = call.route.upstream_model
    if call.upload is None:
        return json.dumps({**body, "model": model}, ensure_ascii=False).encode(), "application/json"
    sent = call.upload.fields()
    changed = {
        name: value for name, value in body.items() if isinstance(value, str) and sent.get(name) != value
    }
    return call.upload.encode({**changed, "model": model})


def guard_output(call: Call, document: Any) -> None:
    """The output guardrails over the answer's text (chat); a block is a 422 after the upstream
    answered: its tokens are counted and its cost recorded."""
    guardrails, read = call.config.output_guardrails, call.operation.output_text
    if not guardrails or read is None or not isinstance(document, dict):
        return
    flagged: list[str] = []
    try:
        for text in read(document):
            check_output(guardrails, text, flagged)
    finally:
        call.row.note_flagged(flagged)


def passthrough(answer: Answer) -> Response:
    """The upstream's body bytes unchanged, with its status and Content-Type."""
    response = Response(answer.content, status=answer.status, content_type=answer.content_type)
    if answer.status >= 400:
        # The upstream's own 4xx: only its rate limit is worth retrying (nothing was generated).
        response.headers["x-should-retry"] = "true" if answer.status == 429 else "false"
    if answer.status == 429 and answer.retry_after:
        response.headers["Retry-After"] = answer.retry_after
    return response
