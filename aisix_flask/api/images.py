"""POST /v1/images/generations: the request path of docs/contract.md, one step per line."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, g, request
from marshmallow import INCLUDE, Schema, ValidationError, fields
from marshmallow.validate import Length, OneOf, Range

from .. import metrics
from ..access import request_id
from ..config import Registry
from ..config.aliases import Route
from ..config.resources import ApiKey, UpstreamSettings
from ..errors import (
    GatewayError,
    InvalidRequest,
    MissingParameter,
    ModelNotFound,
    NotImplementedOperation,
    PermissionDenied,
    ProviderUnavailable,
    UnsupportedProvider,
)
from ..gateway import Gateway, current
from ..policy.auth import authenticate
from ..policy.guardrails import check_input
from ..policy.limits import Scope
from ..proxy import upstream
from ..proxy.adapters import BRIDGES, endpoint_url
from ..proxy.body import read_json_object
from ..proxy.upstream import Timeout
from ..usage.row import UsageRow, whole_number

bp = Blueprint("images", __name__)

ROUTE = "/v1/images/generations"
OPERATION = "images"


@bp.post(ROUTE)
def generate() -> Response:
    """Generate images through the alias's upstream, checking the caller and policy first."""
    started = time.perf_counter()
    gateway = current()
    registry = gateway.config()  # this request's config, start to finish
    key = authenticate(registry.api_keys, request.headers)  # 1
    row = UsageRow(request_id(), key.display_name, ROUTE, request.remote_addr)
    route = None
    try:
        body = read_json_object(registry.gateway.request_body_limit_bytes)  # 2
        row.note_request(body)
        validate(body)  # 3
        route = resolve(registry, body["model"])  # 4
        row.upstream_model, row.provider = route.upstream_model, route.model.provider
        if not key.may_use(route.alias):  # 5
            raise PermissionDenied(f"This API key may not use the model '{route.alias}'.")
        require_openai_provider(route)  # 6
        require_image_bridge(route)  # 7
        require_credential(route)  # 8
        verdict = check_input(registry.input_guardrails, body["prompt"])  # 9
        row.note_guardrails(verdict)
        if verdict.masked:
            body = {**body, "prompt": verdict.prompt}
        timeout = upstream_timeout(route, registry)
        # 10-12, at most once per Idempotency-Key: a repeat gets the stored answer.
        return gateway.idempotency.run(
            request.headers,
            key.display_name,
            body,
            row,
            lambda: generate_upstream(gateway, registry, key, route, body, row, timeout),
            registry.gateway.idempotency,
            timeout.slot_ttl_s,
        )
    except GatewayError as e:
        row.status, row.error_code = e.code, e.error_code
        raise
    except Exception:
        row.status, row.error_code = 500, "internal_error"
        raise
    finally:
        row.latency_ms = (time.perf_counter() - started) * 1000
        gateway.ledger.record(row)  # 13: queued; written off this thread
        metrics.observe(row, route.model.display_name if route else "")
        g.usage_row = row  # for the access log line


def generate_upstream(
    gateway: Gateway,
    registry: Registry,
    key: ApiKey,
    route: Route,
    body: dict[str, Any],
    row: UsageRow,
    timeout: Timeout,
) -> Response:
    """Steps 10 to 12: the rate limits, the upstream call, the answer as the upstream gave it."""
    admission = gateway.limiter.admit(limit_scopes(key, route), timeout.slot_ttl_s)  # 10
    try:
        answer = forward(route, body, row, timeout, registry.gateway.upstream)  # 11
        row.status = answer.status
        row.note_answer(answer.document)
    finally:
        # Count the tokens the upstream reported (none on failure) and give back the slots.
        gateway.limiter.finish(admission, row.total_tokens)
    if route.model.pricing is not None:
        row.cost_usd = route.model.pricing.cost(row)
    if answer.status >= 400:
        row.error_code = answer.error_code()
    answer.document = None  # a large answer's parsed copy is not needed to send its bytes
    return passthrough(answer)  # 12


class _StrictInt(fields.Integer):
    """An integer as JSON Schema means it: a number with no fraction (2 or 2.0), not "2" or true."""

    def _validated(self, value: Any) -> int:
        if whole_number(value) is None:
            raise self.make_error("invalid")
        return super()._validated(value)


class _StrictBool(fields.Boolean):
    """true or false, nothing truthy."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _not_streaming(value: bool | None) -> None:
    if value:
        raise ValidationError("Streaming image generation is not supported by this gateway yet.")


class ImageGenerationSchema(Schema):
    """Checks the fields the gateway knows; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    prompt = fields.String(required=True, validate=Length(min=1))
    n = _StrictInt(allow_none=True, validate=Range(min=1, max=10))
    response_format = fields.String(allow_none=True, validate=OneOf(["url", "b64_json"]))
    size = fields.String(allow_none=True)
    quality = fields.String(allow_none=True)
    style = fields.String(allow_none=True)
    user = fields.String(allow_none=True)
    background = fields.String(allow_none=True)
    moderation = fields.String(allow_none=True)
    output_format = fields.String(allow_none=True)
    output_compression = _StrictInt(allow_none=True, validate=Range(min=0, max=100))
    partial_images = _StrictInt(allow_none=True, validate=Range(min=0, max=3))
    stream = _StrictBool(allow_none=True, validate=_not_streaming)


_schema = ImageGenerationSchema()


def validate(body: dict[str, Any]) -> None:
    """Raise 400 naming the first bad field (in the schema's order); the body is not rewritten."""
    errors = _schema.validate(body)
    if not errors:
        return
    param = next(name for name in (*_schema.fields, *errors) if name in errors)
    if param not in body:
        raise MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    messages = errors[param]
    detail = messages[0] if isinstance(messages, list) else str(messages)
    raise InvalidRequest(f"Invalid value for '{param}': {detail}", param=param)


def resolve(registry: Registry, alias: str) -> Route:
    """The configured route for ``alias``, or 404."""
    route = registry.router.resolve(alias)
    if route is None:
        raise ModelNotFound(f"The model '{alias}' does not exist on this gateway.", param="model")
    return route


def require_openai_provider(route: Route) -> None:
    """The image route is OpenAI's: other providers get 400 before anything is spent."""
    if route.model.provider != "openai":
        raise UnsupportedProvider(
            f"The model '{route.alias}' is configured with provider '{route.model.provider}'; "
            f"{ROUTE} accepts only models whose provider is 'openai'. Check the provider of "
            f"this model in the gateway config.",
            param="model",
        )


def require_image_bridge(route: Route) -> None:
    """The provider key's bridge must implement image generation, else 501."""
    adapter = route.provider_key.adapter
    if not BRIDGES[adapter].implements(OPERATION):
        raise NotImplementedOperation(
            f"The provider key '{route.provider_key.display_name}' of model '{route.alias}' uses "
            f"the '{adapter}' adapter, which does not implement image generation. This is a "
            f"provider capability issue: check that the model's provider key uses an adapter "
            f"that supports images (adapter: openai)."
        )


def require_credential(route: Route) -> None:
    """An upstream credential must be configured, else 503."""
    if not route.provider_key.api_key:
        raise ProviderUnavailable(
            f"The provider key '{route.provider_key.display_name}' has no API key configured; "
            f"check its api_key (and the environment variable it names)."
        )


def limit_scopes(key: ApiKey, route: Route) -> list[Scope]:
    """The caller key's and the model row's limits (wildcard rows count as one model)."""
    return [
        Scope("key", key.display_name, key.rate_limit),
        Scope("model", route.model.display_name, route.model.rate_limit),
    ]


def upstream_timeout(route: Route, registry: Registry) -> Timeout:
    """The (connect, read) timeouts of this route's upstream call."""
    settings = registry.gateway.upstream
    return Timeout(settings.connect_timeout_s, route.model.timeout_s or settings.timeout_s)


def forward(
    route: Route, body: dict[str, Any], row: UsageRow, timeout: Timeout, settings: UpstreamSettings
) -> upstream.Answer:
    """Send the body with only ``model`` rewritten, once, and interpret the answer."""
    payload = json.dumps({**body, "model": route.upstream_model}, ensure_ascii=False).encode()
    url = endpoint_url(route.provider_key.api_base, "/images/generations")
    proxies, verify = upstream.route_settings(url, route.provider_key, settings)
    started = time.perf_counter()
    try:
        answer = upstream.post_json(
            url,
            payload,
            key=route.provider_key,
            request_id=row.request_id,
            timeout=(timeout.connect_s, timeout.read_s),
            proxies=proxies,
            verify=verify,
        )
    finally:
        row.upstream_latency_ms = (time.perf_counter() - started) * 1000
    return upstream.interpret(answer, route.provider_key)


def passthrough(answer: upstream.Answer) -> Response:
    """The upstream's body bytes unchanged, with its status and Content-Type."""
    response = Response(answer.content, status=answer.status, content_type=answer.content_type)
    if answer.status >= 400:
        # The upstream's own 4xx: only its rate limit is worth retrying (nothing was generated).
        response.headers["x-should-retry"] = "true" if answer.status == 429 else "false"
    if answer.status == 429 and answer.retry_after:
        response.headers["Retry-After"] = answer.retry_after
    return response
