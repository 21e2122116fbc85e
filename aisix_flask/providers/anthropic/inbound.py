"""Anthropic's Messages API spoken by the caller, to a model that speaks chat completions: the
anthropic adapter's translation run the other way (README, "Anthropic's Messages API").

``chat_request`` turns a Messages request into a chat completions request (refusing, 400 naming
it, what chat completions cannot carry); ``message`` turns a chat completion into a Messages
answer, ``anthropic_error`` OpenAI's error envelope into Anthropic's; ``inbound_events`` a chat
completion stream into Anthropic's events.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import InvalidRequest, anthropic_envelope
from ..chunks import first_choice, translated

_CARRIED = frozenset(
    {"model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "metadata",
     "stream", "tools", "tool_choice"}
)  # fmt: skip
FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def refuse(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{why} (the model speaks chat completions, not the Messages API).", param=field)


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request for the Messages request ``body``."""
    for field, value in body.items():
        if field not in _CARRIED and value is not None:
            raise refuse(field, f"'{field}' cannot be sent to a chat completions model")
    messages = _system(body.get("system"))
    for i, turn in enumerate(body["messages"]):
        messages += _turn(turn, f"messages[{i}]")
    sent: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_tokens"),
    }
    if body.get("stop_sequences"):
        sent["stop"] = body["stop_sequences"]
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            sent[field] = body[field]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user is not None:
        sent["user"] = user
    if body.get("stream"):
        sent["stream"] = True
        sent["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        sent["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        sent.update(_tool_choice(body["tool_choice"]))
    return sent


def _system(system: Any) -> list[dict[str, Any]]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    return [{"role": "system", "content": "\n".join(_texts(system, "system"))}]


def _texts(blocks: Any, where: str) -> list[str]:
    if isinstance(blocks, str):
        return [blocks]
    if not isinstance(blocks, list):
        raise refuse(where, "content must be a string or a list of blocks")
    texts = []
    for j, block in enumerate(blocks):
        if not (
            isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ):
            raise refuse(f"{where}[{j}]", "only text blocks can be sent here")
        texts.append(block["text"])
    return texts


def _turn(turn: Any, where: str) -> list[dict[str, Any]]:
    """A Messages turn as chat messages: a user turn's tool results become tool messages."""
    role = turn.get("role") if isinstance(turn, dict) else None
    content = turn.get("content") if isinstance(turn, dict) else None
    if role not in ("user", "assistant"):
        raise refuse(f"{where}.role", "a turn's role is user or assistant")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise refuse(f"{where}.content", "content must be a string or a list of blocks")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind, here = block.get("type") if isinstance(block, dict) else None, f"{where}.content[{j}]"
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise refuse(f"{here}.text", "a text block's text must be a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), here)}})
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result" and role == "user":
            result = block.get("content")
            text = result if isinstance(result, str) else "".join(_texts(result or [], f"{here}.content"))
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # (a chat model cannot take back another model's reasoning)
        else:
            raise refuse(f"{here}.type", f"a '{kind}' block cannot be sent to a chat completions model")
    out = list(results)
    if role == "assistant":
        message: dict[str, Any] = {"role": "assistant", "content": "".join(p["text"] for p in parts) or None}
        if calls:
            message["tool_calls"] = calls
        return [message]
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        if not (isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str)):
            raise refuse(f"{where}.source", "a base64 image needs its media_type and data")
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise refuse(f"{where}.source", "an image source is base64 or url")


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or "input_schema" not in tool:
        raise refuse(where, "only custom tools (name, input_schema) can be sent to a chat completions model")
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    chosen: dict[str, Any]
    if kind in ("auto", "none"):
        chosen = {"tool_choice": kind}
    elif kind == "any":
        chosen = {"tool_choice": "required"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chosen = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise refuse("tool_choice", "tool_choice is auto, any, none or a named tool")
    if choice.get("disable_parallel_tool_use") is True:
        chosen["parallel_tool_calls"] = False
    return chosen


def message(completion: Any, alias: str) -> dict[str, Any]:
    """The Messages answer for the chat completion ``completion`` (UpstreamBadResponse when it is
    not one)."""
    return translated(_from_completion, completion, alias)


def _from_completion(completion: Any, alias: str) -> dict[str, Any]:
    choice = first_choice(completion)
    answer = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if answer.get("content"):
        content.append({"type": "text", "text": answer["content"]})
    for call in answer.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {}
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
        )
    return {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": alias,
        "content": content,
        # (a chat model may say "stop" after calling tools: Anthropic's callers wait for tool_use)
        "stop_reason": "tool_use"
        if answer.get("tool_calls")
        else FINISH.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }


def usage(reported: Any) -> dict[str, Any]:
    """OpenAI's usage as Anthropic's: input counts what was not read from a cache."""
    reported = reported if isinstance(reported, dict) else {}
    details = reported.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    return {
        "input_tokens": max(0, (reported.get("prompt_tokens") or 0) - cached),
        "output_tokens": reported.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def anthropic_error(document: Any, status: int) -> dict[str, Any] | None:
    """OpenAI's error envelope as Anthropic's (None: the body is not one)."""
    error = document.get("error") if isinstance(document, dict) else None
    message_text = error.get("message") if isinstance(error, dict) else None
    return anthropic_envelope(status, message_text) if isinstance(message_text, str) else None
