"""Claude and Azure OpenAI behind the OpenAI routes, on the real gunicorn, driven by the official
``openai`` client: fakes of both APIs check every request against their documented shapes
(tests/fake_anthropic.py), and the caller sees OpenAI's answers, streams and errors."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from . import fake_anthropic
from .fake_anthropic import ANTHROPIC_KEY, AZURE_KEY, FakeServer
from .integration import DEV_KEY, ENV, usage_rows
from .serving import Gunicorn, free_port

KEYS = {**ENV, "IT_ANTHROPIC_KEY": ANTHROPIC_KEY, "IT_AZURE_KEY": AZURE_KEY}
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001")).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def providers_config(path: Path, claude: FakeServer, azure: FakeServer) -> Path:
    config = path / "config.yaml"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config.write_text(
        f"""
gateway:
  usage: {{database_url: "sqlite:///{path}/usage.db", journal: "{path}/usage-journal.db"}}
  ratelimit: {{storage_url: "sqlite:///{path}/ratelimit.db"}}
  admin_keys: [{{key_env: IT_ADMIN_KEY}}]
  stream_keepalive_s: 0.2
provider_keys:
  - {{display_name: claude, provider: anthropic, api_key: "${{IT_ANTHROPIC_KEY}}", api_base: "{claude.url}"}}
  - {{display_name: azure, provider: azure, api_key: "${{IT_AZURE_KEY}}", api_base: "{azure.url}",
      api_version: "2024-10-21"}}
  - {{display_name: azure-v1, provider: azure, api_key: "${{IT_AZURE_KEY}}",
      api_base: "{azure.url}/openai/v1"}}
  - {{display_name: gone, provider: openai, api_key: "${{IT_UPSTREAM_KEY}}", api_base: "{dead}"}}
models:
  - {{display_name: claude, provider: anthropic, model_name: claude-sonnet-4-5, provider_key: claude,
      pricing: {{per_million_tokens: {{input: 3, cache_read: 0.3, cache_write: 3.75, output: 15}}}}}}
  - {{display_name: claude-short, provider: anthropic, model_name: claude-haiku-4-5, provider_key: claude,
      max_tokens_default: 256}}
  - {{display_name: azure-chat, provider: azure, model_name: my-gpt4o, provider_key: azure}}
  - {{display_name: azure-embed, provider: azure, model_name: my-embedder, provider_key: azure}}
  - {{display_name: azure-v1-chat, provider: azure, model_name: gpt-4o, provider_key: azure-v1}}
  - {{display_name: gpt-gone, provider: openai, model_name: gpt-4o, provider_key: gone}}
  - display_name: chat
    routing: {{targets: [{{model: gpt-gone}}, {{model: claude, priority: -1}}]}}
  - display_name: claude-first
    routing: {{targets: [{{model: claude}}, {{model: azure-chat}}]}}
api_keys:
  - {{display_name: dev, key_env: IT_DEV_KEY}}
"""
    )
    return config


def both_fakes() -> Iterator[tuple[FakeServer, FakeServer]]:
    """The Anthropic fake and the Azure fake, for a module's fixture (stopped after it)."""
    claude, azure = fake_anthropic.anthropic(), fake_anthropic.azure()
    yield claude, azure
    claude.stop()
    azure.stop()


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeServer, FakeServer]]:
    yield from both_fakes()


@pytest.fixture(scope="module")
def served(tmp_path_factory, fakes) -> Iterator[Gunicorn]:
    server = Gunicorn(providers_config(tmp_path_factory.mktemp("providers"), *fakes), env=KEYS)
    yield server
    server.stop()
    log = server.log.read_text()
    assert ANTHROPIC_KEY not in log and AZURE_KEY not in log


@pytest.fixture
def client(served, fakes) -> Iterator[openai.OpenAI]:
    for fake in fakes:
        fake.calls.clear()
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=DEV_KEY, max_retries=0) as client:
        yield client  # (closed after: a kept-alive connection would hold the server's stop)


def sent(fake: FakeServer) -> dict:
    [call] = fake.calls
    return call


def ledger_row(served: Gunicorn, answer) -> dict:
    """The usage row of the chat completion ``answer`` (its id is the upstream message's)."""
    for _ in range(100):  # rows are written after the answers; give the writer a moment
        rows = usage_rows(served, model="claude")
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no usage row for {answer.id}")


def test_a_chat_with_a_system_prompt(client, fakes, served):
    claude, _ = fakes
    answer = client.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_completion_tokens=100,
        stop="END",
        temperature=0.2,
        user="u-1",
    )
    assert answer.choices[0].message.content == "Hello from Claude"
    assert (answer.choices[0].finish_reason, answer.model) == ("stop", "claude")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        151,
        9,
        160,
    )
    assert answer.usage.prompt_tokens_details.cached_tokens == 100
    row = ledger_row(served, answer)
    assert (row["input_tokens"], row["input_cached_tokens"], row["input_cache_write_tokens"]) == (
        151,
        100,
        30,
    )
    assert row["cost_usd"] == pytest.approx((21 * 3 + 100 * 0.3 + 30 * 3.75 + 9 * 15) / 1e6)
    call = sent(claude)
    assert call["path"] == "/v1/messages" and "Authorization" not in call["headers"]
    assert call["body"] == {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "max_tokens": 100,
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "metadata": {"user_id": "u-1"},
    }


def test_max_tokens_defaults_per_model(client, fakes):
    claude, _ = fakes
    client.chat.completions.create(model="claude-short", messages=[{"role": "user", "content": "Hi"}])
    assert sent(claude)["body"]["max_tokens"] == 256


def test_an_image_input(client, fakes):
    claude, _ = fakes
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://images.example/cat.png"}},
    ]
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert sent(claude)["body"]["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://images.example/cat.png"}},
    ]


def test_a_tool_call_round_trip(client, fakes):
    claude, _ = fakes
    messages = [{"role": "user", "content": "Weather in Paris? [tool]"}]
    first = client.chat.completions.create(
        model="claude", messages=messages, tools=[WEATHER], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking the weather."
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_01",
        "get_weather",
        {"city": "Paris"},
    )
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 °C"},
    ]
    final = client.chat.completions.create(
        model="claude", messages=messages, tools=[WEATHER], parallel_tool_calls=False
    )
    assert final.choices[0].message.content == "It is sunny in Paris."
    first_sent, second_sent = (c["body"] for c in claude.calls)
    assert first_sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert first_sent["tool_choice"] == {"type": "any"}
    assert second_sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert second_sent["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking the weather."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny, 24 °C"},
        ]},
    ]  # fmt: skip


def test_a_stream_of_text(client, fakes):
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "Hi [think]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert (text, reasoning) == ("Hello from Claude", "Let me think about it.")
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"] and chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 160
    assert "stream_options" not in sent(fakes[0])["body"]


def test_a_streamed_tool_call(client, fakes):
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "Weather? [tool]"}],
            tools=[WEATHER],
            stream=True,
        )
    )
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert (calls[0].index, calls[0].id, calls[0].function.name) == (0, "toolu_01", "get_weather")
    assert json.loads("".join(call.function.arguments or "" for call in calls)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert all(c.choices for c in chunks)  # no usage chunk: the caller did not ask


def test_an_upstream_error_before_and_during_a_stream(client, served):
    with pytest.raises(openai.InternalServerError) as overloaded:  # 529 → the gateway's 502
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "[status:529]"}])
    assert "overloaded" in str(overloaded.value).lower()
    with pytest.raises(openai.APIError) as mid_stream:
        for _ in client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "Hi there [error-event]"}], stream=True
        ):
            pass
    assert "Overloaded" in str(mid_stream.value)
    r = requests.post(
        f"{served.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": "claude", "messages": [{"role": "user", "content": "Hi there [cut]"}], "stream": True},
        stream=True,
    )
    body = r.content.decode()
    assert "upstream_stream_interrupted" in body and "[DONE]" not in body


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 2), ("logprobs", True), ("response_format", {"type": "json_object"}), ("presence_penalty", 0.5)],
)
def test_a_field_anthropic_cannot_take_is_refused_naming_it(client, fakes, field, value):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "Hi"}], extra_body={field: value}
        )
    assert refused.value.body["param"] == field and fakes[0].calls == []


def test_a_routing_model_mixing_adapters_answers_openai_either_way(client, fakes):
    answer = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.headers["x-aisix-target"] == "claude"
    assert answer.parse().choices[0].message.content == "Hello from Claude"


def test_a_target_that_cannot_carry_a_field_is_skipped_before_anything_is_spent(client, fakes):
    claude, azure = fakes
    answer = client.chat.completions.with_raw_response.create(
        model="claude-first", messages=[{"role": "user", "content": "Hi"}], n=2
    )
    assert (answer.headers["x-aisix-target"], answer.headers["x-aisix-attempts"]) == ("azure-chat", "1")
    assert (claude.calls, len(azure.calls)) == ([], 1)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("azure-chat", "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"),
        ("azure-v1-chat", "/openai/v1/chat/completions"),
    ],
)
def test_azure_both_url_forms(client, fakes, model, path):
    _, azure = fakes
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Hello from the fake upstream"
    call = sent(azure)
    assert (
        call["path"] == path
        and call["headers"]["api-key"] == AZURE_KEY
        and "Authorization" not in call["headers"]
    )


def test_azure_embeddings_and_streams(client, fakes):
    _, azure = fakes
    vectors = client.embeddings.create(model="azure-embed", input="hello")
    assert len(vectors.data) == 1
    assert azure.calls[0]["path"] == "/openai/deployments/my-embedder/embeddings?api-version=2024-10-21"
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="azure-chat", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        if c.choices
    )
    assert text == "Hello from the fake upstream"


def test_azures_content_filter_is_the_callers_error(client):
    with pytest.raises(openai.BadRequestError) as filtered:
        client.chat.completions.create(
            model="azure-chat", messages=[{"role": "user", "content": "[content-filter]"}]
        )
    assert filtered.value.body["code"] == "content_filter"


def test_images_and_rerank_are_refused_for_these_adapters(served):
    headers = {"Authorization": f"Bearer {DEV_KEY}"}
    r = requests.post(
        f"{served.url}/v1/images/generations", headers=headers, json={"model": "azure-chat", "prompt": "p"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_provider")
    r = requests.post(f"{served.url}/v1/embeddings", headers=headers, json={"model": "claude", "input": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (501, "unsupported_operation")
    r = requests.post(
        f"{served.url}/v1/rerank",
        headers=headers,
        json={"model": "azure-chat", "query": "q", "documents": ["d"]},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (501, "unsupported_operation")
