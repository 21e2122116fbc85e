"""POST /v1/responses (OpenAI's Responses API) on the real gunicorn, driven by the official
``openai`` client against the loopback fake upstream: plain, streamed, a function-tool round trip,
guardrails and the ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from . import fake_anthropic
from .conftest import sha
from .fake_anthropic import FakeServer
from .fake_upstream import FakeOpenAI
from .integration import DEV_KEY, ENV, usage_rows
from .serving import Gunicorn

OTHER_KEY = "integration-other-SECRET-55aa"


def responses_config(path: Path, fake: FakeOpenAI, claude: FakeServer) -> Path:
    config = path / "config.yaml"
    config.write_text(
        f"""
gateway:
  usage: {{database_url: "sqlite:///{path}/usage.db", journal: "{path}/usage-journal.db"}}
  ratelimit: {{storage_url: "sqlite:///{path}/ratelimit.db"}}
  admin_keys: [{{key_env: IT_ADMIN_KEY}}]
provider_keys:
  - {{display_name: openai, provider: openai, api_key: "${{IT_UPSTREAM_KEY}}", api_base: "{fake.url}"}}
  - {{display_name: claude, provider: anthropic, api_key: "${{IT_ANTHROPIC_KEY}}", api_base: "{claude.url}"}}
models:
  - {{display_name: gpt, provider: openai, model_name: gpt-4o, provider_key: openai,
      pricing: {{per_million_tokens: {{input: 2.5, cached_input: 1.25, output: 10}}}}}}
  - {{display_name: claude, provider: anthropic, model_name: claude-x, provider_key: claude}}
api_keys:
  - {{display_name: dev, key_env: IT_DEV_KEY}}
  - {{display_name: other, key_hash: {sha(OTHER_KEY)}}}
guardrails:
  - {{name: no-secrets, kind: keyword, patterns: [{{kind: literal, value: forbidden phrase}}]}}
"""
    )
    return config


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def claude_fake() -> Iterator[FakeServer]:
    server = fake_anthropic.anthropic()
    yield server
    server.stop()


@pytest.fixture
def claude(claude_fake) -> FakeServer:
    claude_fake.calls.clear()
    return claude_fake


@pytest.fixture(scope="module")
def served(tmp_path_factory, fake, claude_fake) -> Iterator[Gunicorn]:
    config = responses_config(tmp_path_factory.mktemp("responses"), fake, claude_fake)
    server = Gunicorn(config, env={**ENV, "IT_ANTHROPIC_KEY": fake_anthropic.ANTHROPIC_KEY})
    yield server
    server.stop()


@pytest.fixture
def client(served, fake) -> Iterator[openai.OpenAI]:
    fake.calls.clear()
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=DEV_KEY, max_retries=0) as client:
        yield client


def rows(served: Gunicorn, count: int) -> list[dict]:
    for _ in range(100):  # rows are written after the answers; give the writer a moment
        found = [row for row in usage_rows(served) if row["route"] == "/v1/responses"]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} /v1/responses rows")


def test_a_response_passes_through_and_is_recorded(client, fake, served):
    response = client.responses.create(model="gpt", input="Say hello", instructions="Be brief.")
    assert response.output_text == "Hello from the fake upstream"
    [call] = fake.calls
    assert call["path"] == "/v1/responses"
    assert call["body"] == {"model": "gpt-4o", "input": "Say hello", "instructions": "Be brief."}
    [row] = rows(served, 1)
    assert (row["input_tokens"], row["output_tokens"], row["input_cached_tokens"]) == (10, 5, 4)
    assert row["cost_usd"] == pytest.approx((6 * 2.5 + 4 * 1.25 + 5 * 10) / 1e6)


def test_a_streamed_response(client, served):
    stream = client.responses.create(model="gpt", input="Count [say:one two three]", stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three" and events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == 3


def test_an_upstream_error_event_ends_the_stream_and_is_recorded(served):
    with requests.post(
        f"{served.url}/v1/responses",
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": "gpt", "input": "Hi there [error-event]", "stream": True},
        stream=True,
    ) as r:
        kinds = [json.loads(line[6:])["type"] for line in r.iter_lines() if line.startswith(b"data: ")]
    assert kinds == [  # relayed, nothing after it
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "error",
    ]
    for _ in range(100):
        failed = [row for row in usage_rows(served) if row["error_code"] == "server_error"]
        if failed:
            break
        time.sleep(0.1)
    assert failed and failed[0]["route"] == "/v1/responses"


def test_a_failed_response_is_recorded_as_a_failure(served):
    with requests.post(
        f"{served.url}/v1/responses",
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": "gpt", "input": "Hi there [failed]", "stream": True},
        stream=True,
    ) as r:
        kinds = [json.loads(line[6:])["type"] for line in r.iter_lines() if line.startswith(b"data: ")]
    assert kinds[-1] == "response.failed"  # relayed as it came, nothing after it
    for _ in range(100):
        failed = [row for row in usage_rows(served) if row["error_code"] == "rate_limit_exceeded"]
        if failed:
            break
        time.sleep(0.1)
    assert failed and failed[0]["status"] == 502 and failed[0]["input_tokens"] == 10


def test_a_function_tool_round_trip(client, fake):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    first = client.responses.create(model="gpt", input='[say:{"q":"x"}] [tool]', tools=tools)
    [call] = first.output
    assert (call.type, call.name, call.arguments) == ("function_call", "lookup", '{"q":"x"}')
    final = client.responses.create(
        model="gpt",
        tools=tools,
        input=[
            {"role": "user", "content": "look it up"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "found"},
        ],
    )
    assert final.output_text == "done"
    assert fake.calls[-1]["body"]["input"][-1] == {
        "type": "function_call_output",
        "call_id": "call_fake",
        "output": "found",
    }


def test_guardrails_read_the_input(client, fake):
    with pytest.raises(openai.UnprocessableEntityError):
        client.responses.create(model="gpt", input=[{"role": "user", "content": "a forbidden phrase here"}])
    with pytest.raises(openai.UnprocessableEntityError):
        client.responses.create(model="gpt", input="hi", instructions="the forbidden phrase")
    assert fake.calls == []


def test_a_claude_model_answers_in_the_responses_api(client, claude):
    response = client.responses.create(
        model="claude", input="Hello", instructions="Be brief.", max_output_tokens=50
    )
    assert (response.output_text, response.status, response.model) == (
        "Hello from Claude",
        "completed",
        "claude",
    )
    assert response.usage.input_tokens == 151 and response.usage.input_tokens_details.cached_tokens == 100
    [call] = claude.calls
    assert (
        call["body"]["system"] == [{"type": "text", "text": "Be brief."}] and call["body"]["max_tokens"] == 50
    )


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_the_official_stream_helper_follows_both(client, model):
    with client.responses.stream(model=model, input="Hi") as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text and text in ("Hello from the fake upstream", "Hello from Claude")


def test_a_claude_stream_and_tool_call_in_the_responses_api(client, claude):
    events = list(client.responses.create(model="claude", input="Hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from Claude"
    assert events[-1].response.output_text == "Hello from Claude"
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    streamed = list(
        client.responses.create(model="claude", input="Weather? [tool]", tools=tools, stream=True)
    )
    arguments = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert arguments == '{"city": "Paris"}'
    [call] = [item for item in streamed[-1].response.output if item.type == "function_call"]
    assert (call.name, call.call_id) == ("get_weather", "toolu_01")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ],
)
def test_what_needs_the_responses_api_itself_is_refused_for_claude(client, claude, extra, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="claude", input="hi", **extra)
    assert refused.value.body["param"] == param and claude.calls == []


def test_a_stored_response_is_retrieved_listed_and_deleted_by_the_key_that_made_it(client, fake, served):
    made = client.responses.create(model="gpt", input="hi")
    assert client.responses.retrieve(made.id).output_text == "Hello from the fake upstream"
    [item] = client.responses.input_items.list(made.id, limit=5).data
    assert item.id == "msg_in"
    paths = [(call.get("method"), call["path"]) for call in fake.calls]
    assert ("GET", "/v1/responses/resp_fake") in paths and (
        "GET",
        "/v1/responses/resp_fake/input_items?limit=5",
    ) in paths
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=OTHER_KEY, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):  # another caller key: as if it did not exist
            other.responses.retrieve(made.id)
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):  # deleted: forgotten
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_never_made")
    assert all(call["headers"].get("Authorization", "").startswith("Bearer sk-") for call in fake.calls)


def test_a_streamed_creation_is_recorded_too_and_a_translated_one_is_not(client, fake):
    list(client.responses.create(model="gpt", input="hi", stream=True))
    assert client.responses.retrieve("resp_fake").id == "resp_fake"
    translated = client.responses.create(model="claude", input="Hello")
    with pytest.raises(openai.NotFoundError):  # Claude keeps no response: nothing to fetch
        client.responses.retrieve(translated.id)
