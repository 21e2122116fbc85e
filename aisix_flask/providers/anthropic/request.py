"""An OpenAI chat completions request as an Anthropic Messages request: every top-level field
carried, or refused with a 400 that names it (never dropped); within messages, what Anthropic has
no place for (a message's ``name``, an image's ``detail``, a function's ``strict``) is left out.
A shape Anthropic would refuse (an empty turn, a tool call without its id) is refused here,
naming the caller's own field rather than an index of the translated request."""

from __future__ import annotations

import json
from typing import Any

from ...config.resources import Model
from ...errors import InvalidRequest

# OpenAI fields carried over below; any other field is refused (400 naming it) unless it has its
# default value, which asks for nothing (``_HARMLESS``).
_CARRIED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p",
     "user", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls"}
)  # fmt: skip
_HARMLESS = {
    "n": (1,),
    "logprobs": (False,),
    "response_format": ({"type": "text"},),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "store": (False,),
}


def refuse(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{why} (the model's provider key uses the anthropic adapter).", param=field)


def messages_request(body: dict[str, Any], upstream_model: str, model: Model) -> dict[str, Any]:
    """The Messages API request for the chat completion request ``body``."""
    for field, value in body.items():
        if field not in _CARRIED and value is not None and value not in _HARMLESS.get(field, ()):
            raise refuse(field, f"'{field}' cannot be sent to Anthropic's Messages API")
    system, turns = _turns(body["messages"])
    if not turns:
        raise refuse("messages", "Anthropic needs at least one user or assistant message")
    sent: dict[str, Any] = {"model": upstream_model, "messages": turns}
    if system:
        sent["system"] = system
    asked = (body.get(field) for field in ("max_completion_tokens", "max_tokens"))
    sent["max_tokens"] = next((n for n in asked if n is not None), model.max_tokens_default)
    stop = body.get("stop")
    if stop is not None:
        sent["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    for field in ("temperature", "top_p", "stream"):
        if body.get(field) is not None:
            sent[field] = body[field]
    if body.get("user") is not None:
        sent["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        sent["tools"] = [_tool(tool, i) for i, tool in enumerate(body["tools"])]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and "tools" in sent and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        sent["tool_choice"] = choice
    return sent


def _turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system blocks, and the user/assistant turns (consecutive ones of a role merged)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, where = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system += _text_blocks(message.get("content"), f"{where}.content")
            continue
        if role == "user":
            role, blocks = "user", _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise refuse(f"{where}.role", f"a '{role}' message cannot be sent to Anthropic")
        if not blocks:
            raise refuse(f"{where}.content", "an empty message cannot be sent to Anthropic")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's text (a string, or text parts) as text blocks."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise refuse(where, "the content must be a string or a list of parts")
    return [block for j, part in enumerate(content) if (block := _text_part(part, f"{where}[{j}]"))]


def _text_part(part: Any, where: str) -> dict[str, Any] | None:
    """A text part as a text block (None for an empty one: Anthropic refuses empty text)."""
    if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
        raise refuse(where, "only text parts can be sent here")
    return {"type": "text", "text": part["text"]} if part["text"] else None


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A user message's text and images as blocks."""
    if not isinstance(content, list):
        return _text_blocks(content, where)
    blocks = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}[{j}].image_url"))
        elif block := _text_part(part, f"{where}[{j}]"):
            blocks.append(block)
    return blocks


def _image(image: Any, where: str) -> dict[str, Any]:
    if not isinstance(image, dict):
        raise refuse(where, "image_url must be an object with a url")
    url = image.get("url")
    if not isinstance(url, str):
        raise refuse(f"{where}.url", "an image part needs a url")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type, _, encoding = head[len("data:") :].partition(";")
        if encoding != "base64" or not data or not media_type:
            raise refuse(f"{where}.url", "a data: URL image must be base64 with its media type")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise refuse(f"{where}.url", "an image must be a data: URL or an https:// URL")


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), f"{where}.content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise refuse(f"{where}.tool_calls", "tool_calls must be a list")
    for k, call in enumerate(calls):
        here = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise refuse(here, "only function tool calls can be sent")
        if not isinstance(call.get("id"), str) or not isinstance(function.get("name"), str):
            raise refuse(here, "a tool call needs its id and its function's name")
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"],
             "input": _arguments(function.get("arguments"), f"{here}.function.arguments")}
        )  # fmt: skip
    return blocks


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    """A tool call's arguments (a JSON object in a string) as the object Anthropic takes."""
    if arguments is None or arguments == "":
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise refuse(where, "the arguments must be a JSON object, as a string")
    return value


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(message.get("tool_call_id"), str):
        raise refuse(f"{where}.tool_call_id", "a tool message needs the id of the call it answers")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    result["content"] = content if isinstance(content, str) else _text_blocks(content, f"{where}.content")
    return result


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise refuse(f"tools[{i}]", "only function tools can be sent to Anthropic")
    if not isinstance(function.get("name"), str):
        raise refuse(f"tools[{i}].function.name", "a tool needs a name")
    sent = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        sent["description"] = function["description"]
    return sent


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("function", {}).get("name") if isinstance(choice.get("function"), dict) else None
        if isinstance(name, str):
            return {"type": "tool", "name": name}
    raise refuse("tool_choice", "tool_choice must be auto, none, required or a named function")
