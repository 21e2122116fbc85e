"""POST /v1/messages (Anthropic's Messages API, what Claude Code and the Anthropic SDK speak) and
POST /v1/messages/count_tokens, through the same request path as every route.

To a model whose adapter is ``anthropic`` the body goes as it is (``model`` rewritten) and the
answer and its events come back as they are; to any other chat model it is translated to chat
completions and its answer and events back (``providers.anthropic.inbound``). Errors on these
routes are in Anthropic's envelope (``errors.envelope``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from flask import Blueprint, Response
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, Range

from ..providers.anthropic.answer import usage as openai_usage
from ..proxy.operation import Operation, Streaming, Texts
from ..proxy.pipeline import handle
from ..proxy.schema import JsonArray, ObjectsOf, OneOfTypes, StrictBool, StrictInt, StrictNumber
from ..usage.row import UsageRow

bp = Blueprint("messages", __name__)


def _is_content(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(b, dict) for b in value))


class TurnSchema(Schema):
    """A turn: a string ``role``; ``content`` a string or an array of blocks."""

    class Meta:
        unknown = INCLUDE

    role = fields.String(required=True, validate=Length(min=1))
    content = OneOfTypes((_is_content, "a string or an array of content blocks"), required=True)


class MessagesSchema(Schema):
    """Checks the fields the gateway knows; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    messages = ObjectsOf(TurnSchema, required=True, validate=Length(min=1))
    max_tokens = StrictInt(required=True, validate=Range(min=1))
    system = OneOfTypes((_is_content, "a string or an array of text blocks"), allow_none=True)
    stream = StrictBool(allow_none=True)
    temperature = StrictNumber(allow_none=True)
    top_p = StrictNumber(allow_none=True)
    tools = JsonArray(allow_none=True)


class CountTokensSchema(Schema):
    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    messages = ObjectsOf(TurnSchema, required=True, validate=Length(min=1))


# -- the texts guardrails read: the system prompt, every text block, every tool result's text --


def _with_texts(body: dict[str, Any], replace: Callable[[str], str]) -> dict[str, Any]:
    """``body`` with each text passed through ``replace``, in one fixed order (reading them and
    writing masked ones back both rely on it)."""

    def blocks(content: Any) -> Any:
        if isinstance(content, str):
            return replace(content)
        if not isinstance(content, list):
            return content
        out = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                block = {**block, "text": replace(block["text"])}
            elif isinstance(block, dict) and block.get("type") == "tool_result":
                block = {**block, "content": blocks(block.get("content"))}
            out.append(block)
        return out

    body = {
        **body,
        "messages": [{**turn, "content": blocks(turn.get("content"))} for turn in body["messages"]],
    }
    if body.get("system") is not None:
        body["system"] = blocks(body["system"])
    return body


TEXTS = Texts.walked(_with_texts)


def answer_text(document: dict[str, Any]) -> list[str]:
    """The answer's text blocks (what output guardrails read)."""
    content = document.get("content")
    return [b["text"] for b in content or [] if isinstance(b, dict) and isinstance(b.get("text"), str)]


def _event_text(event: dict[str, Any]) -> list[tuple[Hashable, str]]:
    delta = event.get("delta") if event.get("type") == "content_block_delta" else None
    if isinstance(delta, dict) and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
        return [(event.get("index", 0), delta["text"])]
    return []


# -- usage: Anthropic's, counted as the ledger counts every model's (cache tokens in the input) --


def note_answer(row: UsageRow, document: dict[str, Any]) -> None:
    if isinstance(document.get("usage"), dict):
        row.note_usage(openai_usage(document["usage"]))


def _note_event(row: UsageRow, event: dict[str, Any]) -> None:
    kind = event.get("type")
    if kind == "message_start" and isinstance((event.get("message") or {}).get("usage"), dict):
        row.note_usage(openai_usage(event["message"]["usage"]))
    elif kind == "message_delta" and isinstance(event.get("usage"), dict):
        # The counts it restates (output always; input and cache in later versions), field by field
        # over what message_start said.
        cached, written = row.input_cached_tokens or 0, row.input_cache_write_tokens or 0
        known = {
            "input_tokens": row.input_tokens - cached - written,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": written,
            "output_tokens": row.output_tokens,
        }
        known.update({k: v for k, v in event["usage"].items() if k in known and isinstance(v, int)})
        row.note_usage(openai_usage(known))


STREAMING = Streaming(
    prepare=lambda body: (body, False),  # Anthropic's streams always report their usage
    note_event=_note_event,
    is_final=lambda data, event: isinstance(event, dict) and event.get("type") == "message_stop",
    text=_event_text,
)

MESSAGES = Operation(
    capability="chat",
    route="/v1/messages",
    upstream_path="/chat/completions",  # a model that speaks chat completions gets them
    native_path="/v1/messages",
    speaks="anthropic",
    what="messages",
    schema=MessagesSchema(),
    texts=TEXTS,
    note_answer=note_answer,
    output_text=answer_text,
    streaming=STREAMING,
    token_kinds=(("input", "output"),),
    forwards=("anthropic-beta",),
)

COUNT_TOKENS = Operation(
    capability="count_tokens",
    route="/v1/messages/count_tokens",
    upstream_path="/v1/messages/count_tokens",
    native_path="/v1/messages/count_tokens",
    speaks="anthropic",
    what="token counting",
    schema=CountTokensSchema(),
    texts=TEXTS,
    note_answer=lambda row, document: None,  # counting generates nothing
    forwards=("anthropic-beta",),
)


@bp.post(MESSAGES.route)
def messages() -> Response:
    """A Messages API answer from the alias's upstream, checking the caller and policy first."""
    return handle(MESSAGES)


@bp.post(COUNT_TOKENS.route)
def count_tokens() -> Response:
    """Anthropic's token count for a Messages request (``anthropic`` models only)."""
    return handle(COUNT_TOKENS)
