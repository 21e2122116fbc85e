"""POST /v1/messages through the request path, in process: each step's refusal in Anthropic's
envelope, guardrails over its texts, limits, idempotency and the ledger, for a Claude model and a
chat model (tests/test_messages_served.py drives it with the official anthropic client)."""

from __future__ import annotations

import pytest
from responses import matchers

from .conftest import CALLER_KEY, CHAT_URL, UPSTREAM, auth, named
from .routed import rows_of

MESSAGES_URL = f"{UPSTREAM}/messages"  # (the fake's api_base ends in /v1)
ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "Hi"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 1},
}
CHAT = {"id": "c", "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2}}  # fmt: skip


CLAUDE_KEY = {
    "display_name": "claude",
    "provider": "anthropic",
    "api_key": "sk-ant-SECRET-x",
    "api_base": UPSTREAM,
}
CLAUDE = {
    "display_name": "claude",
    "provider": "anthropic",
    "model_name": "claude-x",
    "provider_key": "claude",
}


@pytest.fixture
def claude_config(config):
    """The base config and a Claude model on the fake upstream."""
    config["provider_keys"].append(CLAUDE_KEY)
    config["models"].append(CLAUDE)
    return config


@pytest.fixture
def app(make_app, claude_config):
    return make_app(claude_config)


def post(client, model="claude", text="Hello", key=CALLER_KEY, **extra):
    body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}], **extra}
    return client.post("/v1/messages", headers={"x-api-key": key}, json=body)


def anthropic_error(r, status: int, kind: str) -> str:
    assert r.status_code == status and r.headers["Content-Type"] == "application/json"
    body = r.get_json()
    assert set(body) == {"type", "error"} and body["type"] == "error" and body["error"]["type"] == kind
    return body["error"]["message"]


def test_a_claude_model_gets_the_body_as_sent(app, upstream):
    sent = {
        "model": "claude-x",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hello"}],
        "top_k": 3,
    }
    upstream.post(MESSAGES_URL, json=ANSWER, match=[matchers.json_params_matcher(sent)])
    r = post(app.test_client(), top_k=3)
    assert r.status_code == 200 and r.get_json() == ANSWER
    headers = upstream.calls[0].request.headers
    assert headers["x-api-key"] == "sk-ant-SECRET-x" and headers["anthropic-version"] == "2023-06-01"
    [row] = rows_of(app)
    assert (row["route"], row["input_tokens"], row["output_tokens"], row["input_cached_tokens"]) == (
        "/v1/messages",
        6,
        2,
        1,
    )


def test_a_chat_model_gets_chat_completions(app, upstream):
    upstream.post(CHAT_URL, json=CHAT)
    r = post(app.test_client(), model="chat-prod")
    assert r.status_code == 200
    answer = r.get_json()
    assert (answer["type"], answer["content"], answer["model"]) == (
        "message",
        [{"type": "text", "text": "Hi"}],
        "chat-prod",
    )
    assert answer["usage"]["input_tokens"] == 7
    [row] = rows_of(app)
    assert (row["route"], row["input_tokens"], row["upstream_model"]) == ("/v1/messages", 7, "gpt-4o-mini")


def test_each_refusal_speaks_anthropics_envelope(app, upstream):
    client = app.test_client()
    assert "API key" in anthropic_error(post(client, key="nope"), 401, "authentication_error")
    missing = client.post(
        "/v1/messages",
        headers=auth(),
        json={"model": "claude", "messages": [{"role": "user", "content": "x"}]},
    )
    assert "max_tokens" in anthropic_error(missing, 400, "invalid_request_error")
    anthropic_error(post(client, model="nope"), 404, "not_found_error")
    anthropic_error(
        client.post(
            "/v1/messages/count_tokens",
            headers=auth(),
            json={"model": "chat-prod", "messages": [{"role": "user", "content": "x"}]},
        ),
        501,
        "api_error",
    )
    upstream.post(
        MESSAGES_URL,
        status=529,
        json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    assert "Overloaded" in anthropic_error(post(client), 502, "api_error")


@pytest.mark.parametrize(
    "extra",
    [
        {"system": "a Forbidden Phrase"},
        {"system": [{"type": "text", "text": "a Forbidden Phrase"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a Forbidden Phrase"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                     "content": "a Forbidden Phrase"}]}]},
    ],
)  # fmt: skip
def test_input_guardrails_read_every_text(app, extra):
    r = post(app.test_client(), **extra)
    message = anthropic_error(r, 422, "invalid_request_error")
    assert "no-secrets" in message and "Forbidden" not in message


def test_rate_limits_and_idempotency(make_app, claude_config, upstream):
    named(claude_config, "api_keys", "dev")["rate_limit"] = {"rpm": 2}
    client = make_app(claude_config).test_client()
    upstream.post(MESSAGES_URL, json=ANSWER)
    body = {"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello"}]}
    headers = {**auth(), "Idempotency-Key": "m-1"}
    first = client.post("/v1/messages", headers=headers, json=body)
    again = client.post("/v1/messages", headers=headers, json=body)
    assert first.data == again.data and again.headers["x-aisix-idempotent-replay"] == "true"
    assert len(upstream.calls) == 1
    client.post("/v1/messages", headers=auth(), json=body)  # the second of the minute
    limited = client.post("/v1/messages", headers=auth(), json=body)
    assert (
        "Rate limit" in anthropic_error(limited, 429, "rate_limit_error")
        and int(limited.headers["Retry-After"]) >= 1
    )
