"""The texts of chat messages, which the guardrails read: a request's messages, an answer's
messages and a stream's deltas. Masked text is written back in the order it was read."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any


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

    def keep(text: str) -> str:
        texts.append(text)
        return text

    _with_texts(message, keep)
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
