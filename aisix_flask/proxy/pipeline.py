"""The request path every proxied route runs: docs/contract.md's steps 1 to 13, one per line.

A route module declares its ``Operation`` (what differs) and calls ``handle`` with it. Each step
takes what the one before it made and hands on what it makes (the body, the route, what step 10
held, the upstream's answer); the ``Call`` keeps only what the request's end settles.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from ..adapters import ADAPTERS, supporting
from ..config import Config
from ..config.aliases import Candidate, Plan, Route
from ..config.resources import ApiKey
from ..errors import (
    GatewayError,
    ModelNotFound,
    NotImplementedOperation,
    PermissionDenied,
    ProviderUnavailable,
    UnsupportedProvider,
)
from ..gateway import current
from ..policy.auth import authenticate
from ..policy.guardrails import check_input, check_output
from ..providers import conversion_for
from .body import read_json_object
from .call import Call
from .failover import Targets, send_tries
from .multipart import Form, read_form
from .operation import Operation
from .outcomes import Answer
from .schema import validate as check_fields
from .streaming import refuse_idempotency_key, stream_response, stream_slot_lease
from .upstream import Timeout


def handle(operation: Operation) -> Response:
    """Run ``operation`` for this request: check the caller and its policy, then forward once."""
    gateway = current()
    config = gateway.config()  # this request's config, start to finish
    key = authenticate(config.api_keys, request.headers)  # 1
    with Call(gateway, config, operation, key) as call:  # 13: settles what the call holds (see Call)
        body, call.upload = read_body(operation, config)  # 2
        call.row.note_request(body)
        validate(operation, body, call.upload)  # 3
        plan = resolve(config, body["model"])  # 4
        call.resolved(plan)
        require_access(key, plan)  # 5
        targets = Targets(plan, eligible(operation, plan, body), timeouts(config, plan))  # 6-8, each target's
        body = guard_input(call, body)  # 9
        if operation.streaming is not None and body.get("stream") is True:
            refuse_idempotency_key()
            response = stream(call, targets, body)  # 10-12, the answer relayed as it arrives
        else:  # 10-12, at most once per Idempotency-Key: a repeat gets the stored answer
            response = gateway.idempotency.run(
                request.headers,
                key.display_name,
                body,
                call.row,
                lambda: forward(call, targets, body),
                config.settings.idempotency,
                targets.slot_ttl_s,
                digest=call.upload.digest if call.upload else None,
            )
        response.headers.update(call.answer_headers())  # x-ratelimit-*, x-aisix-target
        return response


def read_body(operation: Operation, config: Config) -> tuple[dict[str, Any], Form | None]:
    """The body as a JSON object; for a route that takes forms, multipart/form-data too: then its
    text fields as the body, and the form (its files described, its parts kept for sending on)."""
    limit = config.settings.request_body_limit_bytes
    if operation.form_schema is not None and request.mimetype == "multipart/form-data":
        form = read_form(limit)
        try:
            return form.fields(), form
        except BaseException:  # a field that cannot be read: the call never gets the form to close
            form.close()
            raise
    return read_json_object(limit), None


def validate(operation: Operation, body: dict[str, Any], upload: Form | None) -> None:
    """Step 3: the route's schema (its form schema for a form); 400 naming the first bad field."""
    form_schema = operation.form_schema if upload is not None else None
    check_fields(form_schema or operation.schema, body)


def resolve(config: Config, alias: str) -> Plan:
    """The configured plan for ``alias``, or 404."""
    plan = config.router.resolve(alias)
    if plan is None:
        raise ModelNotFound(f"The model '{alias}' does not exist on this gateway.", param="model")
    return plan


def require_access(key: ApiKey, plan: Plan) -> None:
    """The caller key's ``allowed_models`` must admit the alias it named (never its targets'), else 403."""
    if not key.may_use(plan.alias):
        raise PermissionDenied(f"This API key may not use the model '{plan.alias}'.")


def eligible(operation: Operation, plan: Plan, body: dict[str, Any]) -> list[Candidate]:
    """Steps 6 to 8 for each target: those that pass, in the plan's order; when none does, the
    first target's refusal."""
    passing: list[Candidate] = []
    first_refusal: GatewayError | None = None
    for candidate in plan.candidates:
        try:
            require_provider(operation, candidate.route)  # 6
            require_adapter(operation, candidate.route, body)  # 7
            require_credential(candidate.route)  # 8
        except GatewayError as refusal:
            first_refusal = first_refusal or refusal
        else:
            passing.append(candidate)
    if not passing:
        assert first_refusal is not None
        raise first_refusal
    return passing


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


def require_adapter(operation: Operation, route: Route, body: dict[str, Any]) -> None:
    """The provider key's adapter must implement the operation, else 501; and carry every field
    of the body (a translating bridge, anthropic's), else 400 naming the first it cannot."""
    adapter = route.provider_key.adapter
    if not ADAPTERS[adapter].implements(operation.capability):
        raise NotImplementedOperation(
            f"The provider key '{route.provider_key.display_name}' of model '{route.alias}' uses "
            f"the '{adapter}' adapter, which does not implement {operation.what}. This is a "
            f"provider capability issue: check that the model's provider key uses an adapter "
            f"that supports {operation.what} (adapter: {', '.join(supporting(operation.capability))})."
        )
    conversion = conversion_for(adapter, operation.speaks)
    if conversion.translates and (refused := conversion.refusal(body, route.upstream_model, route.model)):
        raise refused


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


def timeouts(config: Config, plan: Plan) -> dict[str, Timeout]:
    """Each target's connect timeout and read budget (its model's, else the gateway's)."""
    settings = config.settings.upstream
    return {
        c.route.alias: Timeout(settings.connect_timeout_s, c.route.model.timeout_s or settings.timeout_s)
        for c in plan.candidates
    }


def forward(call: Call, targets: Targets, body: dict[str, Any]) -> Response:
    """Steps 10 to 12: the rate limits and budgets, the upstream call, the answer as it came."""
    attempt = send_tries(call, targets, body, targets.slot_ttl_s)  # 10-11
    return answered(call, attempt.answer)  # 12


def stream(call: Call, targets: Targets, body: dict[str, Any]) -> Response:
    """Steps 10 to 12 of a stream: the limits, the upstream call (moving on to another target only
    before its events began), its events relayed."""
    spec = call.operation.streaming
    assert spec is not None  # handle streams only what the operation can
    outgoing, hide_usage = spec.prepare(body)
    slowest = max(targets.timeout_for.values(), key=lambda t: t.read_s)
    lease = stream_slot_lease(call.config.settings.stream_keepalive_s, slowest)
    attempt = send_tries(call, targets, outgoing, lease, streamed=True)  # 10-11
    if attempt.events is None:  # an upstream that answered JSON after all
        return answered(call, attempt.answer)
    timeout = targets.timeout_for[attempt.route.alias]
    return stream_response(call, attempt, spec, hide_usage, timeout, lease)  # 12


def answered(call: Call, answer: Answer | None) -> Response:
    """Record what a whole answer says, check its text, and pass it on as it is."""
    assert answer is not None  # send_tries raised the error of an attempt that failed
    if answer.status < 400:
        call.operation.note_answer(call.row, answer.document)
        call.note_created(answer.document)
        guard_output(call, answer.document)
    answer.document = None  # a large answer's parsed copy is not needed to send its bytes
    return passthrough(answer)  # 12


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
