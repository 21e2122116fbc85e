"""A chat completion stream as Anthropic's Messages events, in Anthropic's order: message_start,
each content block (text, then each tool call) started, its deltas, stopped, then message_delta
(the stop reason, the usage) and message_stop at the chat stream's ``[DONE]``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from ...errors import anthropic_envelope
from ..chunks import read_chunks
from .inbound import FINISH, anthropic_error, usage


def events(chunks: Iterable[Any], alias: str) -> Iterator[Any]:
    """Anthropic's events for a chat completion stream (``chunks.read_chunks``)."""
    return read_chunks(chunks, _Stream(alias))


def _event(kind: str, document: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **document}, ensure_ascii=False)
    return f"event: {kind}\ndata: {data}\n\n".encode()


class _Stream:
    """Where the chat stream is: the block open, each tool call's block, the finish and usage."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.started = False
        self.block = -1  # the open content block (-1: none)
        self.open_kind = ""  # "text" or "tool"
        self.tools: dict[int, int] = {}  # tool call index → content block index
        self.finish = "end_turn"
        self.usage: dict[str, Any] = usage(None)

    def take(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        if chunk.get("error"):
            yield _event("error", anthropic_error(chunk, 500) or anthropic_envelope(500, "upstream error"))
            return
        if not self.started:
            self.started = True
            start: dict[str, Any] = {
                "id": chunk.get("id"), "type": "message", "role": "assistant", "model": self.alias,
                "content": [], "stop_reason": None, "stop_sequence": None, "usage": self.usage,
            }  # fmt: skip
            yield _event("message_start", {"message": start})
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                yield from self._open("text", None)
                text = {"type": "text_delta", "text": delta["content"]}
                yield _event("content_block_delta", {"index": self.block, "delta": text})
            for call in delta.get("tool_calls") or []:
                yield from self._tool(call)
            if choice.get("finish_reason"):
                self.finish = FINISH.get(choice["finish_reason"], "end_turn")

    def _open(self, kind: str, block: dict[str, Any] | None) -> Iterator[bytes]:
        if self.open_kind == kind and kind == "text":
            return
        yield from self._close()
        self.block += 1
        self.open_kind = kind
        yield _event(
            "content_block_start",
            {"index": self.block, "content_block": block or {"type": "text", "text": ""}},
        )

    def _close(self) -> Iterator[bytes]:
        if self.open_kind:
            yield _event("content_block_stop", {"index": self.block})
            self.open_kind = ""

    def _tool(self, call: dict[str, Any]) -> Iterator[bytes]:
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.tools:
            block: dict[str, Any] = {
                "type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}
            }  # fmt: skip
            yield from self._open("tool", block)
            self.tools[index] = self.block
        if function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            yield _event("content_block_delta", {"index": self.tools[index], "delta": delta})

    def end(self) -> Iterator[bytes]:
        if not self.started:
            return
        yield from self._close()
        stop = "tool_use" if self.tools else self.finish  # (a chat model may say "stop" after tools)
        yield _event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                       "usage": self.usage})  # fmt: skip
        yield _event("message_stop", {})
