"""POST /v1/messages (Anthropic's Messages API) on the real gunicorn, driven by the official
``anthropic`` client: passed through to a Claude model, translated for a model that speaks chat
completions; errors in Anthropic's envelope; count_tokens (tests/fake_anthropic.py checks what
Anthropic receives, the Azure fake serves chat completions)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import pytest
import requests

from . import fake_anthropic
from .fake_anthropic import FakeServer
from .integration import DEV_KEY, usage_rows
from .serving import Gunicorn
from .test_providers_served import KEYS, both_fakes, providers_config

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeServer, FakeServer]]:
    yield from both_fakes()


@pytest.fixture(scope="module")
def served(tmp_path_factory, fakes) -> Iterator[Gunicorn]:
    server = Gunicorn(providers_config(tmp_path_factory.mktemp("messages"), *fakes), env=KEYS)
    yield server
    server.stop()


@pytest.fixture
def client(served, fakes) -> Iterator[anthropic.Anthropic]:
    for fake in fakes:
        fake.calls.clear()
    with anthropic.Anthropic(base_url=served.url, api_key=DEV_KEY, max_retries=0) as client:
        yield client


def test_a_claude_model_gets_the_request_as_it_was_sent(client, fakes, served):
    claude, _ = fakes
    message = client.messages.create(
        model="claude",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
        extra_body={"top_k": 5},
    )
    assert (message.content[0].text, message.stop_reason, message.model) == (
        "Hello from Claude",
        "end_turn",
        "claude-sonnet-4-5",
    )
    [call] = claude.calls
    assert call["body"] == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}],
        "top_k": 5,
    }
    assert call["headers"]["x-api-key"] == fake_anthropic.ANTHROPIC_KEY  # the gateway's key, not the caller's
    for _ in range(100):
        rows = [row for row in usage_rows(served, model="claude") if row["route"] == "/v1/messages"]
        if rows:
            break
        time.sleep(0.1)
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"], rows[0]["input_cached_tokens"]) == (
        151,
        9,
        100,
    )


def test_a_claude_stream_and_a_tool_round_trip(client, fakes, served):
    with client.messages.stream(
        model="claude",
        max_tokens=100,
        messages=[{"role": "user", "content": "Hi [stream-usage]"}],
        extra_headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"},
    ) as stream:
        assert stream.get_final_text() == "Hello from Claude"
    assert fakes[0].calls[-1]["headers"]["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"
    for _ in range(100):  # a passed-through stream's usage: message_start's, then message_delta's
        rows = [
            r
            for r in usage_rows(served, model="claude")
            if r["route"] == "/v1/messages" and r["output_tokens"] == 9
        ]
        if rows:
            break
        time.sleep(0.1)
    assert (rows[0]["input_tokens"], rows[0]["input_cached_tokens"], rows[0]["input_cache_write_tokens"]) == (
        151,
        100,
        30,
    )
    messages = [{"role": "user", "content": "Weather in Paris? [tool]"}]
    first = client.messages.create(model="claude", max_tokens=100, messages=messages, tools=[WEATHER])
    [use] = [block for block in first.content if block.type == "tool_use"]
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]
    final = client.messages.create(model="claude", max_tokens=100, messages=messages, tools=[WEATHER])
    assert final.content[0].text == "It is sunny in Paris."


def test_a_chat_model_answers_in_the_messages_api(client, fakes):
    _, azure = fakes
    message = client.messages.create(
        model="azure-chat",
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["END"],
    )
    assert message.type == "message" and message.content[0].text == "Hello from the fake upstream"
    assert (message.stop_reason, message.model, message.usage.output_tokens) == ("end_turn", "azure-chat", 5)
    [call] = azure.calls
    assert call["body"] == {
        "model": "my-gpt4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 50,
        "stop": ["END"],
    }


def test_a_chat_model_streams_and_calls_tools_in_the_messages_api(client, fakes):
    with client.messages.stream(
        model="azure-chat", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        assert stream.get_final_text() == "Hello from the fake upstream"
        assert stream.get_final_message().usage.output_tokens > 0
    first = client.messages.create(
        model="azure-chat",
        max_tokens=50,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": '[say:{"city":"Paris"}] [tool]'}],
    )
    [use] = first.content
    assert (use.type, use.name, use.input, first.stop_reason) == (
        "tool_use",
        "lookup",
        {"city": "Paris"},
        "tool_use",
    )
    sent = fakes[1].calls[-1]["body"]
    assert (
        sent["tool_choice"] == "required"
        and sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    )


def test_errors_are_anthropics(client, served):
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.body["type"] == "error" and unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=served.url, api_key="wrong", max_retries=0).messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    with pytest.raises(anthropic.InternalServerError):  # Claude's 529, the gateway's 502
        client.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "[status:529]"}]
        )
    with pytest.raises(anthropic.BadRequestError) as refused:  # top_k: chat completions have none
        client.messages.create(
            model="azure-chat",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"top_k": 3},
        )
    assert "top_k" in refused.value.message


def test_count_tokens_for_claude_and_501_for_others(client, served):
    counted = client.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "Hi"}])
    assert counted.input_tokens == 7
    r = requests.post(
        f"{served.url}/v1/messages/count_tokens",
        headers={"x-api-key": DEV_KEY},
        json={"model": "azure-chat", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert r.status_code == 501 and r.json()["error"]["type"] == "api_error"
