"""A config with routing models over two upstreams (the base one and ``SECOND``), and helpers for
the tests that route (a pytest plugin: conftest loads it, so ``routed`` is a fixture everywhere)."""

from __future__ import annotations

import pytest

from .conftest import auth

SECOND = "https://second.test/v1"
CHAT = {"id": "c", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}}


@pytest.fixture
def routed(config):
    config["provider_keys"].append(
        {"display_name": "openai-b", "provider": "openai", "api_key": "sk-b", "api_base": SECOND}
    )
    config["models"] += [
        {"display_name": "chat-b", "provider": "openai", "model_name": "gpt-4o", "provider_key": "openai-b"},
        {
            "display_name": "image-b",
            "provider": "openai",
            "model_name": "gpt-image-1",
            "provider_key": "openai-b",
        },
        {
            "display_name": "chat-routed",
            "routing": {"targets": [{"model": "chat-prod"}, {"model": "chat-b"}]},
        },
        {
            "display_name": "images-routed",
            "routing": {
                "targets": [{"model": "deepseek-image"}, {"model": "image-prod"}, {"model": "image-b"}]
            },
        },
        {"display_name": "images-deepseek-only", "routing": {"targets": [{"model": "deepseek-image"}]}},
    ]
    return config


def chat(client, model="chat-routed", **headers):
    return client.post(
        "/v1/chat/completions",
        headers={**auth(), **headers},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


def rows_of(app) -> list[dict]:
    ledger = app.extensions["aisix"].ledger
    assert ledger.flush(10)
    return list(reversed(ledger.query(limit=1000)))
