"""OpenAI's Responses API spoken by the caller, to a model that only speaks chat completions (an
OpenAI-compatible vendor; Claude, through the anthropic bridge after this): the stateless core
(README, "The Responses API").

``chat_request`` turns a Responses request into a chat completions request, refusing (400 naming
it) what needs state or a built-in tool; ``response`` turns a chat completion into a response;
``events`` a chat completion stream into ``response.*`` events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import InvalidRequest
from .chunks import first_choice, read_chunks, translated

_CARRIED = frozenset(
    {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "tools",
     "tool_choice", "parallel_tool_calls", "user"}
)  # fmt: skip
# Fields whose value here asks for nothing a chat model cannot do.
_HARMLESS = {"store": (False,), "text": ({"format": {"type": "text"}},), "truncation": ("disabled",)}


def refuse(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{why} (the model speaks chat completions, not the Responses API).", param=field)


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request for the Responses request ``body``."""
    for field, value in body.items():
        if field not in _CARRIED and value is not None and value not in _HARMLESS.get(field, ()):
            raise refuse(field, f"'{field}' needs the Responses API itself")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body["input"]
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        for i, item in enumerate(given):
            _add_item(messages, item, f"input[{i}]")
    sent: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("max_output_tokens") is not None:
        sent["max_tokens"] = body["max_output_tokens"]
    for field in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(field) is not None:
            sent[field] = body[field]
    if body.get("stream"):
        sent["stream"] = True
        sent["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        sent["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        sent["tool_choice"] = _tool_choice(body["tool_choice"])
    return sent


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise refuse(f"{where}.role", "a message's role is user, assistant, system or developer")
        messages.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
    elif kind == "function_call":
        function = {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}
        call = {"id": item.get("call_id"), "type": "function", "function": function}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            raise refuse(f"{where}.output", "a function call's output must be a string")
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
    else:
        raise refuse(f"{where}.type", f"a '{kind}' item needs the Responses API itself")


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise refuse(where, "content must be a string or a list of parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise refuse(f"{where}[{j}]", f"a '{kind}' part needs the Responses API itself")
    return parts


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)):
        raise refuse(
            where, "only function tools can be used with this model (built-in tools need the Responses API)"
        )
    function = {
        "name": tool["name"],
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise refuse("tool_choice", "tool_choice is auto, none, required or a named function")


def response(completion: Any, alias: str) -> dict[str, Any]:
    """The response for the chat completion ``completion`` (UpstreamBadResponse when it is not one)."""
    return translated(_from_completion, completion, alias)


def _from_completion(completion: Any, alias: str) -> dict[str, Any]:
    choice = first_choice(completion)
    ident = str(completion.get("id") or "")
    answer = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if answer.get("content"):
        output.append(_message_item(ident, answer["content"]))
    for call in answer.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(_call_item(call.get("id"), function.get("name"), function.get("arguments") or ""))
    return _response(ident, alias, output, choice.get("finish_reason"), completion.get("usage"))


def _message_item(ident: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{ident}", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip


def _call_item(call_id: Any, name: Any, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": "completed"}  # fmt: skip


def _response(
    ident: str, alias: str, output: list[dict[str, Any]], finish: Any, reported: Any
) -> dict[str, Any]:
    incomplete = finish == "length"
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": alias,
        "output": output,
        "usage": usage(reported),
    }


def usage(reported: Any) -> dict[str, Any]:
    """A chat completion's usage as a response's."""
    reported = reported if isinstance(reported, dict) else {}
    details = reported.get("prompt_tokens_details") or {}
    prompt, completion_tokens = reported.get("prompt_tokens") or 0, reported.get("completion_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion_tokens,
    }


def events(chunks: Iterable[Any], alias: str) -> Iterator[Any]:
    """``response.*`` events for a chat completion stream (``chunks.read_chunks``)."""
    return read_chunks(chunks, _Stream(alias))


class _Stream:
    """What the chat stream said so far, as the Responses API's output items: each added in turn
    (the text's message, each tool call), with the events the official client's stream helper
    follows (an item added, its part added, its deltas, its text or arguments done, it done)."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.ident = ""
        self.started = False
        self.number = 0
        self.items: list[dict[str, Any]] = []  # in output order: {"kind", "text" | call fields}
        self.text_at: int | None = None  # the message item's output index
        self.calls: dict[int, int] = {}  # tool call index → output index
        self.finish: Any = None
        self.usage: Any = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        self.number += 1
        data = json.dumps({"type": kind, "sequence_number": self.number, **fields}, ensure_ascii=False)
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def take(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        error = chunk.get("error")
        if error:  # the Responses API's error event: its fields at the top
            fields = error if isinstance(error, dict) else {"message": str(error)}
            yield self._event("error", code=fields.get("code"), message=fields.get("message"), param=None)
            return
        if not self.started:
            self.started, self.ident = True, str(chunk.get("id") or "")
            begun = {
                **_response(self.ident, self.alias, [], None, None),
                "status": "in_progress",
                "usage": None,
            }
            yield self._event("response.created", response=begun)
            yield self._event("response.in_progress", response=begun)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            delta = delta if isinstance(delta, dict) else {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                yield from self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    yield from self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _text(self, text: str) -> Iterator[bytes]:
        if self.text_at is None:
            self.text_at = len(self.items)
            self.items.append({"kind": "message", "text": ""})
            item = {**_message_item(self.ident, ""), "status": "in_progress", "content": []}
            yield self._event("response.output_item.added", output_index=self.text_at, item=item)
            part = {"type": "output_text", "text": "", "annotations": []}
            yield self._event("response.content_part.added", item_id=f"msg_{self.ident}",
                              output_index=self.text_at, content_index=0, part=part)  # fmt: skip
        self.items[self.text_at]["text"] += text
        yield self._event("response.output_text.delta", item_id=f"msg_{self.ident}",
                          output_index=self.text_at, content_index=0, delta=text)  # fmt: skip

    def _call(self, call: dict[str, Any]) -> Iterator[bytes]:
        index, function = call.get("index", 0), call.get("function") or {}
        if index not in self.calls:
            self.calls[index] = len(self.items)
            self.items.append({"kind": "function_call", "id": call.get("id"), "name": function.get("name"),
                               "arguments": ""})  # fmt: skip
            item = {**_call_item(call.get("id"), function.get("name"), ""), "status": "in_progress"}
            yield self._event("response.output_item.added", output_index=self.calls[index], item=item)
        at = self.calls[index]
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            self.items[at]["arguments"] += function["arguments"]
            yield self._event("response.function_call_arguments.delta", item_id=f"fc_{self.items[at]['id']}",
                              output_index=at, delta=function["arguments"])  # fmt: skip

    def end(self) -> Iterator[bytes]:
        if not self.started:
            return
        output = []
        for at, kept in enumerate(self.items):
            if kept["kind"] == "message":
                item = _message_item(self.ident, kept["text"])
                item_id = item["id"]
                yield self._event("response.output_text.done", item_id=item_id, output_index=at,
                                  content_index=0, text=kept["text"])  # fmt: skip
                yield self._event("response.content_part.done", item_id=item_id, output_index=at,
                                  content_index=0, part=item["content"][0])  # fmt: skip
            else:
                item = _call_item(kept["id"], kept["name"], kept["arguments"])
                done = "response.function_call_arguments.done"
                yield self._event(done, item_id=item["id"], output_index=at, arguments=kept["arguments"])
            yield self._event("response.output_item.done", output_index=at, item=item)
            output.append(item)
        whole = _response(self.ident, self.alias, output, self.finish, self.usage)
        kind = "response.incomplete" if whole["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=whole)
