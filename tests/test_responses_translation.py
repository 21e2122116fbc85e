"""The Responses API to a chat completions model, apart from HTTP: the request, refused fields, the
answer and the stream as tables; and the records of who created a stored response, on SQLite and
Redis."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from limits.storage import storage_from_string

from aisix_flask.errors import InvalidRequest
from aisix_flask.providers.responses import chat_request, events, response
from aisix_flask.stores.response_owners import Owner, response_owners_for

REDIS_URL = "redis://127.0.0.1:6379/7"


def test_a_request_as_chat_completions():
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Look at"},
                {"type": "input_image", "image_url": "https://x.test/cat.png"},
            ]},
            {"type": "function_call", "call_id": "c1", "name": "look", "arguments": '{"q": 1}'},
            {"type": "function_call", "call_id": "c2", "name": "look", "arguments": '{"q": 2}'},
            {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
        ],
        "max_output_tokens": 40,
        "stream": True,
        "store": False,
        "tools": [{"type": "function", "name": "look", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "look"},
    }  # fmt: skip
    assert chat_request(body) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look at"},
                {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"q": 1}'}},
                {"id": "c2", "type": "function", "function": {"name": "look", "arguments": '{"q": 2}'}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ],
        "max_tokens": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
    ],
)
def test_what_needs_the_responses_api_is_refused_naming_it(body, param):
    with pytest.raises(InvalidRequest) as refused:
        chat_request({"model": "m", "input": "hi", **body})
    assert refused.value.param == param


def test_an_answer_as_a_response():
    completion = {
        "id": "c9",
        "choices": [{"finish_reason": "length", "message": {"content": "Hi", "tool_calls": [
            {"id": "t1", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}},
    }  # fmt: skip
    made = response(completion, "alias")
    assert (made["id"], made["object"], made["model"], made["status"]) == (
        "resp_c9",
        "response",
        "alias",
        "incomplete",
    )
    assert made["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["type"] for item in made["output"]] == ["message", "function_call"]
    assert made["output"][0]["content"][0] == {"type": "output_text", "text": "Hi", "annotations": []}
    assert made["output"][1]["call_id"] == "t1"
    assert (
        made["usage"]["input_tokens_details"] == {"cached_tokens": 3} and made["usage"]["total_tokens"] == 10
    )


def chunk(delta=None, finish=None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps({"id": "c", "choices": choices, **extra}).encode() + b"\n\n"


def test_a_stream_as_response_events():
    out = list(
        events(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hi"}),
                chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                chunk({}, "tool_calls"),
                chunk(usage={"prompt_tokens": 4, "completion_tokens": 2}),
                b"data: [DONE]\n\n",
            ],
            "alias",
        )
    )
    data = [json.loads(e.split(b"data: ", 1)[1]) for e in out]
    assert [(d["type"], d.get("output_index")) for d in data] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    assert [d["sequence_number"] for d in data] == list(range(1, 14))
    assert data[-1]["response"]["usage"]["total_tokens"] == 6 and len(data[-1]["response"]["output"]) == 2


@pytest.fixture(params=["sqlite", "redis"])
def owners(request, tmp_path):
    url = f"sqlite:///{tmp_path}/limits.db" if request.param == "sqlite" else REDIS_URL
    if request.param == "redis":
        redis.Redis.from_url(REDIS_URL).ping()  # .ci/run starts Redis when it is down
    yield response_owners_for(storage_from_string(url))
    if request.param == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()


def test_who_created_a_response_is_remembered_and_forgotten(owners):
    made = f"resp_{uuid.uuid4().hex}"
    assert owners.owner(made) is None
    owners.remember(made, Owner("dev", "gpt"))
    assert owners.owner(made) == Owner("dev", "gpt")
    owners.forget(made)
    assert owners.owner(made) is None
