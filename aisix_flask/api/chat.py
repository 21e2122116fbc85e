"""POST /v1/chat/completions: chat, streamed or not, through any provider whose adapter has it."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any

from flask import Blueprint, Response
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, Range

from ..proxy.operation import Operation, Streaming, Texts
from ..proxy.pipeline import handle
from ..proxy.schema import JsonArray, OneOfTypes, StrictBool, StrictInt, StrictNumber
from ..usage.row import UsageRow

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
    messages = fields.List(fields.Nested(MessageSchema), required=True, validate=Length(min=1))
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


def read_messages(body: dict[str, Any]) -> list[str]:
    """Every message's text, every role: string content, the ``text`` of text parts, a refusal,
    and the arguments of each tool call (and of a legacy ``function_call``)."""
    return [text for message in body["messages"] for text in _texts_in(message)]


def write_messages(body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """The body with each text ``read_messages`` found replaced, in the same order."""
    replacements = iter(texts)
    messages = [_with_texts(message, lambda _: next(replacements)) for message in body["messages"]]
    return {**body, "messages": messages}


def _texts_in(message: dict[str, Any]) -> list[str]:
    """A message's texts, in the order ``_with_texts`` passes them."""
    texts: list[str] = []
    _with_texts(message, lambda text: texts.append(text) or text)
    return texts


def _with_texts(message: dict[str, Any], replace: Callable[[str], str]) -> dict[str, Any]:
    """``message`` with each of its texts passed through ``replace``, in one fixed order (what
    reading and writing them back both rely on)."""
    content = message.get("content")
    if isinstance(content, str):
        message = {**message, "content": replace(content)}
    elif isinstance(content, list):
        parts = [{**part, "text": replace(part["text"])} if _is_text_part(part) else part for part in content]
        message = {**message, "content": parts}
    if isinstance(message.get("refusal"), str):
        message = {**message, "refusal": replace(message["refusal"])}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        message = {**message, "tool_calls": [_with_arguments(call, replace) for call in calls]}
    if isinstance(message.get("function_call"), dict):
        message = {**message, "function_call": _with_arguments(message["function_call"], replace)}
    return message


def _with_arguments(call: Any, replace: Callable[[str], str]) -> Any:
    """A tool call (``{"function": {"arguments": …}}``, or a custom tool's ``{"custom": {"input":
    …}}``) or a legacy function call (``{"arguments": …}``) with its texts passed through
    ``replace``: the string values of JSON arguments, else the whole text."""
    if not isinstance(call, dict):
        return call
    for holder, field in (("function", "arguments"), ("custom", "input")):
        inner = call.get(holder)
        if isinstance(inner, dict) and isinstance(inner.get(field), str):
            return {**call, holder: {**inner, field: _json_texts(inner[field], replace)}}
    if isinstance(call.get("arguments"), str):
        return {**call, "arguments": _json_texts(call["arguments"], replace)}
    return call


def _json_texts(arguments: str, replace: Callable[[str], str]) -> str:
    """``arguments`` with each string value in it passed through ``replace`` (the text a guardrail
    reads is the value, not its JSON escapes; masked values are encoded again), or the whole
    text when it is not JSON."""
    try:
        document = json.loads(arguments)
    except ValueError:
        return replace(arguments)
    changed = False

    def walk(value: Any) -> Any:
        nonlocal changed
        if isinstance(value, str):
            new = replace(value)
            changed = changed or new != value
            return new
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {name: walk(item) for name, item in value.items()}
        return value

    walked = walk(document)
    # ASCII escapes: a value may hold a lone surrogate that UTF-8 cannot encode.
    return json.dumps(walked) if changed else arguments


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def answer_text(document: dict[str, Any]) -> list[str]:
    """The assistant's text in a (non-streamed) answer: every choice's message content, refusal
    and tool-call arguments."""
    choices = document.get("choices")
    messages = (
        [choice.get("message") for choice in choices if isinstance(choice, dict)]
        if isinstance(choices, list)
        else []
    )
    return [text for message in messages if isinstance(message, dict) for text in _texts_in(message)]


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


def chunk_text(chunk: dict[str, Any]) -> list[tuple[Hashable, str]]:
    """The assistant's new text in a streamed chunk, each with what it continues: a choice's
    content, its refusal, or the arguments of one of its tool calls (by the call's index)."""
    choices = chunk.get("choices")
    texts: list[tuple[Hashable, str]] = []
    for choice in choices if isinstance(choices, list) else []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        index = choice.get("index") if isinstance(choice.get("index"), int) else 0
        for field in ("content", "refusal"):
            if isinstance(delta.get(field), str) and delta[field]:
                texts.append(((index, field), delta[field]))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str) and arguments:
                position = call.get("index") if isinstance(call.get("index"), int) else None
                texts.append(((index, "tool_calls", position), arguments))
        legacy = delta.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str) and legacy["arguments"]:
            texts.append(((index, "function_call"), legacy["arguments"]))
    return texts


STREAMING = Streaming(
    prepare=ask_for_usage,
    note_event=_note_chunk,
    is_final=lambda data, chunk: data == "[DONE]",
    is_usage_only=_usage_only,
    text=chunk_text,
)

CHAT = Operation(
    name="chat",
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
