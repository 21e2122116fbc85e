"""What the in-process stream tests share (a pytest plugin, see conftest.py): the ``streaming``
app, a streamed request, its events as sent or parsed, the ledger row it left and the calls the
fake upstream saw."""

from __future__ import annotations

import json

import pytest
import requests

from .conftest import auth, base_config

ROUTE = "/v1/chat/completions"


def chat(client, text: str, model: str = "chat-prod", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True, **extra}
    return client.post(ROUTE, headers=auth(), json=body, buffered=False)


def events(response) -> list[bytes]:
    """The answer's events, each as sent (blank line included)."""
    data = b"".join(response.response)
    response.close()
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


def payloads(response) -> list:
    """Each event's data: "[DONE]", or its JSON."""
    out = []
    for event in events(response):
        for line in event.splitlines():
            if line.startswith(b"data: "):
                data = line[6:].decode()
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def ledger_row(app) -> dict:
    ledger = app.extensions["aisix"].ledger
    assert ledger.flush(10)
    [row] = ledger.query()
    return row


def fake_calls(fake) -> list[dict]:
    return requests.get(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5).json()


@pytest.fixture
def streaming(make_app, tmp_path, fake):
    """An app whose upstream is the fake; returns (app, client), the fake's calls forgotten
    (tests/test_streaming.py, tests/test_image_streams.py)."""
    requests.delete(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5)
    config = base_config(tmp_path, fake.url)
    config["gateway"]["stream_keepalive_s"] = 0.2
    for alias, upstream_model in (("quick-chat", "gpt-4o-mini"), ("quick-image", "gpt-image-1")):
        quick = {"display_name": alias, "provider": "openai", "provider_key": "openai-main", "timeout_s": 1.0}
        config["models"].append({**quick, "model_name": upstream_model})
    config["guardrails"].append(
        {
            "name": "no-launch-codes",
            "kind": "keyword",
            "hook_point": "output",
            "patterns": [{"kind": "literal", "value": "launch code"}],
        }  # fmt: skip
    )
    app = make_app(config)
    return app, app.test_client()
