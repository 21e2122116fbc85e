"""Anthropic's Messages API spoken by the caller to a chat completions model, apart from HTTP: the
request, the answer, errors and the stream as tables (tests/test_messages_served.py drives them)."""

from __future__ import annotations

import json

import pytest

from aisix_flask.errors import InvalidRequest
from aisix_flask.providers.anthropic.inbound import anthropic_error, chat_request, message
from aisix_flask.providers.anthropic.inbound_events import events

HI = [{"role": "user", "content": "Hi"}]


def test_a_request_as_chat_completions():
    body = {
        "model": "m",
        "max_tokens": 20,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "tu", "name": "look", "input": {"q": "x"}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu", "content": "a cat"}]},
        ],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "stream": True,
        "tools": [{"name": "look", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": True},
    }  # fmt: skip
    assert chat_request(body) == {
        "model": "m",
        "max_tokens": 20,
        "messages": [
            {"role": "system", "content": "Be brief.\nUse metric units."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "tu", "type": "function", "function": {"name": "look", "arguments": '{"q": "x"}'}},
            ]},
            {"role": "tool", "tool_call_id": "tu", "content": "a cat"},
        ],
        "stop": ["END"],
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages[0].content[0].type"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ],
)  # fmt: skip
def test_what_chat_completions_cannot_carry_is_refused_naming_it(body, param):
    with pytest.raises(InvalidRequest) as refused:
        chat_request({"model": "m", "max_tokens": 5, "messages": HI, **body})
    assert refused.value.param == param


def test_an_answer_as_a_message():
    completion = {
        "id": "c1",
        "choices": [{"message": {"content": "Hi", "tool_calls": [
            {"id": "t", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                     "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}},
    }  # fmt: skip
    assert message(completion, "alias") == {
        "id": "c1",
        "type": "message",
        "role": "assistant",
        "model": "alias",
        "content": [
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 6,
            "output_tokens": 3,
            "cache_read_input_tokens": 4,
            "cache_creation_input_tokens": 0,
        },
    }


def test_errors_as_anthropics():
    assert anthropic_error({"error": {"message": "no", "type": "invalid_request_error"}}, 400) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "no"},
    }
    assert anthropic_error({"error": {"message": "busy"}}, 529)["error"]["type"] == "overloaded_error"
    assert anthropic_error("<html>", 502) is None


def chunk(delta=None, finish=None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps({"id": "c", "choices": choices, **extra}).encode() + b"\n\n"


def test_a_stream_in_anthropics_order():
    keepalive = object()
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        keepalive,
        chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 5, "completion_tokens": 2}),
        b"data: [DONE]\n\n",
    ]
    out = list(events(chunks, "alias"))
    assert keepalive in out
    sent = [o for o in out if isinstance(o, bytes)]
    kinds = [e.split(b"\n", 1)[0].decode().removeprefix("event: ") for e in sent]
    assert kinds == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    data = [json.loads(e.split(b"data: ", 1)[1]) for e in sent]
    assert data[5]["content_block"] == {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    assert "".join(d["delta"].get("partial_json", "") for d in data[6:8]) == '{"a": 1}'
    assert data[9]["delta"]["stop_reason"] == "tool_use" and data[9]["usage"]["output_tokens"] == 2


def test_a_stream_cut_before_done_never_says_message_stop():
    out = list(events([chunk({"content": "Hi"})], "alias"))
    assert not any(b"message_stop" in e for e in out)
