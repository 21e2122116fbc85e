"""The anthropic adapter's translation, apart from HTTP: requests, answers, errors and stream events
as tables (README, the adapter table; tests/test_providers_served.py drives them end to end)."""

from __future__ import annotations

import json

import pytest

from aisix_flask.config.resources import Model
from aisix_flask.errors import InvalidRequest, UpstreamBadResponse
from aisix_flask.providers.anthropic.answer import completion, openai_error, usage
from aisix_flask.providers.anthropic.events import chunks
from aisix_flask.providers.anthropic.request import messages_request

TOOL = {"type": "function", "function": {"name": "f", "strict": True}}
SENT_TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {}}}


def call(id_: str, arguments: object) -> dict:
    return {"id": id_, "type": "function", "function": {"name": "w", "arguments": arguments}}


MODEL = Model("claude", "anthropic", "claude-key", "claude-sonnet-4-5", max_tokens_default=4096)
HI = [{"role": "user", "content": "Hi"}]
HI_BLOCKS = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def sent(**body):
    return messages_request({"model": "claude", "messages": HI, **body}, "claude-sonnet-4-5", MODEL)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"max_tokens": 4096}),
        ({"max_tokens": 50}, {"max_tokens": 50}),
        ({"max_tokens": 50, "max_completion_tokens": 70}, {"max_tokens": 70}),
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
        ({"temperature": 0.5, "top_p": 0.9}, {"temperature": 0.5, "top_p": 0.9}),
        ({"user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
        ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
        ({"n": 1, "logprobs": False, "response_format": {"type": "text"}}, {}),
        ({"tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
        ({"tools": [TOOL], "tool_choice": "auto", "parallel_tool_calls": False},
         {"tools": [SENT_TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
        ({"tools": [TOOL], "parallel_tool_calls": False},
         {"tools": [SENT_TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
        ({"parallel_tool_calls": False}, {}),  # no tools: nothing to run in parallel
        ({"tools": [TOOL], "tool_choice": "none", "parallel_tool_calls": False},
         {"tools": [SENT_TOOL], "tool_choice": {"type": "none"}}),
        ({"max_completion_tokens": None, "max_tokens": 100}, {"max_tokens": 100}),
        ({"frequency_penalty": 0, "presence_penalty": 0, "store": False}, {}),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}},
         {"tool_choice": {"type": "tool", "name": "f"}}),
        ({"tools": [TOOL]}, {"tools": [SENT_TOOL]}),
    ],
)  # fmt: skip
def test_fields_carried(body, expected):
    assert sent(**body) == {
        "model": "claude-sonnet-4-5",
        "messages": HI_BLOCKS,
        "max_tokens": 4096,
        **expected,
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"seed": 7}, "seed"),
        ({"frequency_penalty": 0.1}, "frequency_penalty"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
         "messages[0].content[0].image_url.url"),
        ({"messages": [{"role": "assistant", "content": None,
                        "tool_calls": [{"id": "c", "type": "function",
                                        "function": {"name": "f", "arguments": "{"}}]}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "assistant", "tool_calls": [call("c", {"x": 1})]}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "assistant", "tool_calls": [call("c", "[1]")]}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "assistant", "tool_calls": 5}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
         "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]},
         "messages[1].tool_call_id"),
        ({"messages": [{"role": "system", "content": "only this"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
         "messages[1].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]}]},
         "messages[0].content[0].image_url"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                     "image_url": {"url": "data:;base64,AAAA"}}]}]},
         "messages[0].content[0].image_url.url"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ],
)  # fmt: skip
def test_fields_refused_naming_them(body, param):
    with pytest.raises(InvalidRequest) as refused:
        messages_request({"model": "claude", "messages": HI, **body}, "m", MODEL)
    assert refused.value.param == param and "anthropic adapter" in refused.value.description


def test_turns_system_tools_and_merging():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Weather?"},
        {"role": "user", "content": "In Paris."},
        {"role": "assistant", "content": None,
         "tool_calls": [call("t1", '{"c": "P"}'), call("t2", '{"c": "L"}')]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "rain"}]},
    ]  # fmt: skip
    body = messages_request({"model": "claude", "messages": messages}, "m", MODEL)
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use metric units."},
    ]
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather?"}, {"type": "text", "text": "In Paris."},
        ]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "P"}},
            {"type": "tool_use", "id": "t2", "name": "w", "input": {"c": "L"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "rain"}]},
        ]},
    ]  # fmt: skip


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "content": [
        {"type": "thinking", "thinking": "Hmm.", "signature": "s"},
        {"type": "text", "text": "Let me check. "},
        {"type": "text", "text": "One moment."},
        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "usage": {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 2,
    },
}


def test_an_answer_as_a_chat_completion():
    answer = completion(MESSAGE, "claude")
    assert (answer["id"], answer["object"], answer["model"]) == ("msg_1", "chat.completion", "claude")
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Let me check. One moment.",
        "reasoning_content": "Hmm.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"c": "Paris"}'}}
        ],
    }
    assert answer["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 5,
        "total_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 2},
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), (None, "stop")],
)  # fmt: skip
def test_stop_reasons(stop, finish):
    answer = completion({"content": [{"type": "text", "text": "x"}], "stop_reason": stop}, "a")
    assert answer["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
         {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}),
        ({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
         {"message": "bad", "type": "invalid_request_error", "param": None, "code": "invalid_request_error"}),
        ({"type": "error", "error": {"type": "billing_error", "message": "pay"}},
         {"message": "pay", "type": "upstream_error", "param": None, "code": "billing_error"}),
    ],
)  # fmt: skip
def test_errors_in_openais_envelope(document, error):
    assert openai_error(document) == {"error": error}


@pytest.mark.parametrize("document", [None, "<html>Bad gateway</html>", {"error": "x"}, {"message": "m"}])
def test_a_body_that_is_not_anthropics_error_is_left_as_it_came(document):
    assert openai_error(document) is None  # (reported as any upstream's error body would be)


def test_an_answer_that_is_not_a_message_is_a_bad_response():
    with pytest.raises(UpstreamBadResponse):
        completion({"content": ["text"]}, "a")


def event(kind: str, **fields) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def relayed(events: list) -> list:
    """The translated events' data: "[DONE]", JSON, or a non-event item as it is."""
    out = []
    for item in chunks(events, "claude"):
        if not isinstance(item, bytes):
            out.append(item)
            continue
        data = item.decode().removeprefix("data: ").strip()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


KEEPALIVE = object()


def test_a_stream_in_openais_order():
    start = {"id": "msg_2", "usage": {"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": 6}}
    events = [
        event("message_start", message=start),
        event("ping"),
        KEEPALIVE,
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
        event("content_block_stop", index=0),
        event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "tu", "name": "w", "input": {}},
        ),
        event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"c":'}),
        event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '"P"}'}),
        event("content_block_stop", index=1),
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 7}),
        event("message_stop"),
    ]
    out = relayed(events)
    assert out[1] is KEEPALIVE and out[-1] == "[DONE]"
    chunks_ = [o for o in out if isinstance(o, dict)]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == "msg_2" and c["model"] == "claude"
        for c in chunks_
    )
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks_ if c["choices"]]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({"content": "lo"}, None),
        (
            {
                "tool_calls": [
                    {"index": 0, "id": "tu", "type": "function", "function": {"name": "w", "arguments": ""}}
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"c":'}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '"P"}'}}]}, None),
        ({}, "tool_calls"),
    ]
    assert chunks_[-1]["choices"] == [] and chunks_[-1]["usage"]["prompt_tokens"] == 10
    assert chunks_[-1]["usage"]["completion_tokens"] == 7


def test_an_error_event_and_a_cut_stream():
    start = event("message_start", message={"id": "m", "usage": {}})
    error = event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    out = relayed([start, error])
    assert out[-1] == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}
    }
    cut = relayed([start, event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"})])
    unknown = relayed([start, event("error", error="?")])
    assert unknown[-1]["error"]["type"] == "upstream_error"
    assert "[DONE]" not in cut and cut[-1]["choices"][0]["delta"] == {"content": "Hi"}


def test_usage_counts_every_input_token():
    assert usage({"input_tokens": 1, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 3}, 4) == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 3},
    }


def test_a_streamed_tool_call_without_arguments_gets_an_empty_object():
    tool = {"type": "tool_use", "id": "tu", "name": "now", "input": {}}
    out = relayed(
        [
            event("message_start", message={"id": "m", "usage": {}}),
            event("content_block_start", index=0, content_block=tool),
            event("content_block_stop", index=0),
            event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 3}),
            event("message_stop"),
        ]
    )
    calls = [
        call
        for o in out
        if isinstance(o, dict) and o["choices"]
        for call in o["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert "".join(c["function"]["arguments"] for c in calls) == "{}"
