"""An Anthropic Messages stream as OpenAI's chat completion chunks, in OpenAI's order: the role
first, content (and reasoning) deltas, each tool call's id and name then its argument fragments,
the finish chunk, the usage chunk, ``data: [DONE]``. An ``error`` event becomes OpenAI's error
event; a stream cut before ``message_stop`` ends without ``[DONE]`` (the relay says it was cut).
Anything that is not an event's bytes (the relay's keep-alive marker) passes as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .answer import STOP_REASONS, openai_error, usage

DONE = b"data: [DONE]\n\n"


def chunks(events: Iterable[Any], alias: str) -> Iterator[Any]:
    """The OpenAI events for Anthropic's ``events`` (each one whole event's bytes)."""
    stream = _Stream(alias)
    for event in events:
        if not isinstance(event, bytes):
            yield event  # the relay's keep-alive
            continue
        data = _data(event)
        if data is None:
            continue  # a comment, or an event without data
        yield from stream.take(data)


class _Stream:
    """What the events so far said: the message's id, its usage, where each tool call is."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.id = ""
        self.created = int(time.time())
        self.reported: dict[str, Any] = {}  # message_start's usage
        self.output_tokens: int | None = None
        self.finish = "stop"
        self.tools: dict[int, int] = {}  # content block index → tool call index
        self.argued: set[int] = set()  # the tool blocks that sent argument fragments

    def take(self, event: dict[str, Any]) -> Iterator[bytes]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = message.get("id") or ""
            self.reported = message.get("usage") or {}
            yield self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tools[event.get("index", 0)] = len(self.tools)
                call = {"index": index, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
                yield self._chunk({"tool_calls": [call]})
            elif block.get("type") == "text" and block.get("text"):
                yield self._chunk({"content": block["text"]})
        elif kind == "content_block_delta":
            yield from self._delta(event.get("index", 0), event.get("delta") or {})
        elif kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            self.finish = STOP_REASONS.get(stop or "", "stop")
            self.output_tokens = (event.get("usage") or {}).get("output_tokens", self.output_tokens)
        elif kind == "message_stop":
            yield self._chunk({}, self.finish)
            yield _event({**self._head(), "choices": [], "usage": usage(self.reported, self.output_tokens)})
            yield DONE
        elif kind == "content_block_stop":
            block = event.get("index", 0)
            if block in self.tools and block not in self.argued:  # no fragment: no arguments, "{}"
                call = {"index": self.tools[block], "function": {"arguments": "{}"}}
                yield self._chunk({"tool_calls": [call]})
        elif kind == "error":
            error = openai_error(event)
            unknown = {"message": "The upstream sent an error event.", "type": "upstream_error", "code": None}
            yield _event(error or {"error": {**unknown, "param": None}})
        # ping and events of later API versions say nothing to relay

    def _delta(self, block: int, delta: dict[str, Any]) -> Iterator[bytes]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            yield self._chunk({"content": delta["text"]})
        elif kind == "thinking_delta" and delta.get("thinking"):
            yield self._chunk({"reasoning_content": delta["thinking"]})
        elif kind == "input_json_delta" and delta.get("partial_json") and block in self.tools:
            self.argued.add(block)
            call = {"index": self.tools[block], "function": {"arguments": delta["partial_json"]}}
            yield self._chunk({"tool_calls": [call]})

    def _head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.alias,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**self._head(), "choices": [choice]})


def _event(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, ensure_ascii=False).encode() + b"\n\n"


def _data(event: bytes) -> dict[str, Any] | None:
    """An event's JSON data (None: it has none, or it is not a JSON object)."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        document = json.loads(b"\n".join(lines))
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
