"""POST /v1/chat/completions: chat, streamed or not, through any provider whose adapter has it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, Range

from ..proxy.operation import Operation, Streaming, Texts
from ..proxy.pipeline import handle
from ..proxy.schema import JsonArray, ObjectsOf, OneOfTypes, StrictBool, StrictInt, StrictNumber
from ..usage.row import UsageRow
from .chat_texts import answer_text, chunk_text, read_messages, write_messages

bp = Blueprint("chat", __name__)


def _is_content(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(part, dict) for part in value))
    )


class StreamOptionsSchema(Schema):
    """``stream_options``: ``include_usage`` a boolean when sent; the rest as sent."""

    class Meta:
        unknown = INCLUDE

    include_usage = StrictBool(allow_none=True)


class MessageSchema(Schema):
    """A message: a string ``role``; ``content`` a string, an array of parts, or null."""

    class Meta:
        unknown = INCLUDE

    role = fields.String(required=True, validate=Length(min=1))
    content = OneOfTypes((_is_content, "a string, an array of content parts or null"), allow_none=True)


def _is_stop(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(s, str) for s in value))
    )


class ChatCompletionSchema(Schema):
    """Checks the fields the gateway knows; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    messages = ObjectsOf(MessageSchema, required=True, validate=Length(min=1))
    stream = StrictBool(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    n = StrictInt(allow_none=True, validate=Range(min=1))
    max_tokens = StrictInt(allow_none=True, validate=Range(min=0))
    max_completion_tokens = StrictInt(allow_none=True, validate=Range(min=0))
    temperature = StrictNumber(allow_none=True)
    top_p = StrictNumber(allow_none=True)
    stop = OneOfTypes((_is_stop, "a string or an array of strings"), allow_none=True)
    tools = JsonArray(allow_none=True)
    user = fields.String(allow_none=True)


def ask_for_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask the upstream for the usage-only last chunk (the tokens are needed for the limits, the
    ledger and the cost); when the caller did not ask for it, it is not relayed."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body, False
    return {**body, "stream_options": {**(options or {}), "include_usage": True}}, True


def _note_chunk(row: UsageRow, chunk: dict[str, Any]) -> None:
    if isinstance(chunk.get("usage"), dict):
        row.note_usage(chunk["usage"])


def _usage_only(chunk: dict[str, Any]) -> bool:
    return chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


STREAMING = Streaming(
    prepare=ask_for_usage,
    note_event=_note_chunk,
    is_final=lambda data, chunk: data == "[DONE]",
    is_usage_only=_usage_only,
    text=chunk_text,
)

CHAT = Operation(
    capability="chat",
    route="/v1/chat/completions",
    upstream_path="/chat/completions",
    what="chat completions",
    schema=ChatCompletionSchema(),
    texts=Texts(read=read_messages, write=write_messages),
    note_answer=UsageRow.note_answer_usage,
    output_text=answer_text,
    streaming=STREAMING,
    token_kinds=(("input", "output"),),
)


@bp.post(CHAT.route)
def chat_completions() -> Response:
    """A chat completion through the alias's upstream, checking the caller and policy first."""
    return handle(CHAT)
