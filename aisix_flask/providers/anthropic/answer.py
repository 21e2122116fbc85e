"""An Anthropic Messages answer, its usage and its errors, as OpenAI's chat completion shapes."""

from __future__ import annotations

import json
import time
from typing import Any

from ...errors import UpstreamBadResponse

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}
# Anthropic's error types, as OpenAI's clients read them.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}


def completion(message: dict[str, Any], alias: str) -> dict[str, Any]:
    """The chat completion for the Messages answer ``message`` (UpstreamBadResponse when it is
    not one)."""
    blocks = message.get("content")
    if not (isinstance(blocks, list) and all(isinstance(block, dict) for block in blocks)):
        raise UpstreamBadResponse("The upstream answered HTTP 2xx with a body that is not a Messages answer.")
    texts, reasoning, calls = [], [], []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
            calls.append(
                {"id": block.get("id"), "type": "function",
                 "function": {"name": block.get("name"), "arguments": arguments}}
            )  # fmt: skip
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        answer["reasoning_content"] = "".join(reasoning)
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": STOP_REASONS.get(message.get("stop_reason") or "", "stop"),
            }
        ],  # fmt: skip
        "usage": usage(message.get("usage") or {}),
    }


def usage(reported: dict[str, Any], output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's: the prompt counts every input token, cached or not."""
    cache_read = reported.get("cache_read_input_tokens") or 0
    cache_write = reported.get("cache_creation_input_tokens") or 0
    prompt = (reported.get("input_tokens") or 0) + cache_read + cache_write
    completion_tokens = output_tokens if output_tokens is not None else reported.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }


def openai_error(document: Any) -> dict[str, Any] | None:
    """Anthropic's error envelope as OpenAI's (None: the body is not one, say a proxy's page: it is
    reported as any upstream's would be)."""
    error = document.get("error") if isinstance(document, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not (isinstance(kind, str) and isinstance(message, str)):
        return None
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(kind, "upstream_error"),
            "param": None,
            "code": kind,
        }
    }
