"""POST /v1/responses (OpenAI's Responses API), streamed or not, through the same request path as
every route: to models whose adapter speaks it (``openai``, ``azure-openai``), the body as it is
(``model`` rewritten) and the answer and its ``response.*`` events as they come; to other chat
models (an OpenAI-compatible vendor, Claude) its stateless core translated to chat completions and
back (``providers.responses``; README, "The Responses API").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from flask import Blueprint, Response, request
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, Range

from ..errors import ResponseNotFound, ServiceUnavailable
from ..gateway import current
from ..incoming import request_id
from ..policy.auth import authenticate
from ..providers import conversion_for
from ..proxy import upstream
from ..proxy.operation import Operation, Streaming, Texts
from ..proxy.outcomes import interpret
from ..proxy.pipeline import handle
from ..proxy.schema import JsonArray, OneOfTypes, StrictBool, StrictInt, StrictNumber
from ..stores import STORE_ERRORS
from ..usage.row import UsageRow

bp = Blueprint("responses", __name__)

# The events that end a response's stream, each with the response and its usage.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _is_input(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)
    )


class ResponseSchema(Schema):
    """Checks the fields the gateway knows; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    input = OneOfTypes((_is_input, "a non-empty string or an array of input items"), required=True)
    instructions = fields.String(allow_none=True)
    stream = StrictBool(allow_none=True)
    max_output_tokens = StrictInt(allow_none=True, validate=Range(min=1))
    temperature = StrictNumber(allow_none=True)
    top_p = StrictNumber(allow_none=True)
    tools = JsonArray(allow_none=True)


# -- the texts guardrails read: the instructions, a string input, every input item's text --

_TEXT_PARTS = ("input_text", "output_text", "text")


def _with_texts(body: dict[str, Any], replace: Callable[[str], str]) -> dict[str, Any]:
    """``body`` with each text passed through ``replace``, in one fixed order."""

    def content(value: Any) -> Any:
        if isinstance(value, str):
            return replace(value)
        if not isinstance(value, list):
            return value
        return [
            {**part, "text": replace(part["text"])}
            if isinstance(part, dict)
            and part.get("type") in _TEXT_PARTS
            and isinstance(part.get("text"), str)
            else part
            for part in value
        ]

    def item(value: dict[str, Any]) -> dict[str, Any]:
        if "content" in value:
            value = {**value, "content": content(value["content"])}
        if value.get("type") == "function_call_output" and isinstance(value.get("output"), str):
            value = {**value, "output": replace(value["output"])}
        return value

    if isinstance(body.get("instructions"), str):
        body = {**body, "instructions": replace(body["instructions"])}
    given = body["input"]
    return {**body, "input": replace(given) if isinstance(given, str) else [item(i) for i in given]}


TEXTS = Texts.walked(_with_texts)


def answer_text(document: dict[str, Any]) -> list[str]:
    """The answer's output text (what output guardrails read)."""
    return [
        part["text"]
        for item in document.get("output") or []
        if isinstance(item, dict)
        for part in item.get("content") or []
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


def _note_event(row: UsageRow, event: dict[str, Any]) -> None:
    if event.get("type") in FINAL_EVENTS and isinstance(event.get("response"), dict):
        row.note_usage(event["response"].get("usage"))


def _event_text(event: dict[str, Any]) -> list[tuple[Hashable, str]]:
    if event.get("type") == "response.output_text.delta" and isinstance(event.get("delta"), str):
        return [((event.get("item_id"), event.get("content_index")), event["delta"])]
    return []


def _upstream_error(event: dict[str, Any]) -> Any:
    """The error of an ``error`` event (its fields at the top), or of ``response.failed``."""
    if event.get("type") == "error":
        return event
    if event.get("type") == "response.failed":
        failed = event.get("response")
        error = failed.get("error") if isinstance(failed, dict) else None
        return error or {"code": "response_failed"}
    return None


STREAMING = Streaming(
    prepare=lambda body: (body, False),  # the final event always carries the usage
    note_event=_note_event,
    is_final=lambda data, event: isinstance(event, dict) and event.get("type") in FINAL_EVENTS,
    text=_event_text,
    upstream_error=_upstream_error,
)


def created(document: dict[str, Any]) -> str | None:
    """The id of the response an answer (``"object": "response"``) or a stream's
    ``response.created`` event made."""
    made = document.get("response") if document.get("type") == "response.created" else document
    if isinstance(made, dict) and made.get("object") == "response" and isinstance(made.get("id"), str):
        return str(made["id"])
    return None


RESPONSES = Operation(
    capability="chat",  # (a model that speaks chat completions gets them)
    route="/v1/responses",
    upstream_path="/chat/completions",
    native_path="/responses",
    speaks="responses",
    what="responses",
    schema=ResponseSchema(),
    texts=TEXTS,
    note_answer=UsageRow.note_answer_usage,
    output_text=answer_text,
    streaming=STREAMING,
    token_kinds=(("input", "output"),),
    creates=created,
)


@bp.post(RESPONSES.route)
def responses() -> Response:
    """A response from the alias's upstream, checking the caller and policy first."""
    return handle(RESPONSES)


@bp.get("/v1/responses/<response_id>")
def retrieve(response_id: str) -> Response:
    """A stored response, from the provider that holds it, for the caller key that created it."""
    return stored(response_id, "GET")


@bp.delete("/v1/responses/<response_id>")
def delete(response_id: str) -> Response:
    """Delete a stored response at its provider (and forget who created it)."""
    return stored(response_id, "DELETE")


@bp.get("/v1/responses/<response_id>/input_items")
def input_items(response_id: str) -> Response:
    """The input items of a stored response (the query string, pagination, passed on)."""
    return stored(response_id, "GET", "/input_items")


def stored(response_id: str, method: str, suffix: str = "") -> Response:
    """Send ``method`` for a stored response to the provider key of the model row that created
    it, as the gateway recorded when it relayed the creation; 404 for an id it did not relay, or
    that another caller key created. No usage row: nothing is generated."""
    gateway = current()
    config = gateway.config()
    key = authenticate(config.api_keys, request.headers)
    owners = gateway.response_owners
    try:
        owner = owners.owner(response_id) if owners is not None else None
    except STORE_ERRORS as e:
        gateway.limiter.health.failed("responses: who created a response not read", e)
        raise ServiceUnavailable(
            "The gateway cannot look up this response right now; retry shortly."
        ) from None
    plan = (
        config.router.resolve(owner.target)
        if owner is not None and owner.api_key == key.display_name
        else None
    )
    if plan is None:
        raise ResponseNotFound(
            f"No response with id '{response_id}' was created through this gateway with this key."
        )
    route = plan.candidates[0].route
    provider_key = route.provider_key
    conversion = conversion_for(provider_key.adapter, "responses")
    url = conversion.bridge.url(provider_key, f"/responses/{response_id}{suffix}", route.upstream_model)
    if request.query_string:
        url += ("&" if "?" in url else "?") + request.query_string.decode("latin-1")
    settings = config.settings.upstream
    proxies, verify = upstream.route_settings(url, provider_key, settings)
    answer = upstream.fetch(
        method,
        url,
        credentials=conversion.bridge.credentials(provider_key),
        request_id=request_id(),
        timeout=(settings.connect_timeout_s, route.model.timeout_s or settings.timeout_s),
        proxies=proxies,
        verify=verify,
    )
    answer = interpret(answer, provider_key, conversion, route.alias)
    if method == "DELETE" and answer.status < 300 and owners is not None:
        try:
            owners.forget(response_id)
        except STORE_ERRORS as e:  # (deleted at the provider: a later fetch gets its 404)
            gateway.limiter.health.failed("responses: a deleted response not forgotten", e)
    return Response(answer.content, status=answer.status, content_type=answer.content_type)
