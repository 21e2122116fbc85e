"""What the budget tests share (a pytest plugin, see conftest.py): the ``budgeted`` app, the
prices it sets, and requests and figures they read."""

from __future__ import annotations

import pytest

from aisix_flask.gateway import Gateway

from .conftest import ADMIN_KEY, IMAGES_URL, auth, named

PER_IMAGE = {"per_image": {"1024x1024": {"standard": 0.04, "hd": 0.08}},
             "defaults": {"size": "1024x1024", "quality": "standard"}}  # fmt: skip
PER_TOKEN = {"per_million_tokens": {"input": 1000.0, "output": 2000.0}}  # 0.001 / 0.002 USD a token


def image(client, n=1, quality=None, model="dalle"):
    body = {"model": model, "prompt": "p", "n": n, **({"quality": quality} if quality else {})}
    return client.post("/v1/images/generations", headers=auth(), json=body)


def chat(client, model="chat-prod"):
    return client.post(
        "/v1/chat/completions",
        headers=auth(),
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


def images_answer(upstream, n):
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": f"u{i}"} for i in range(n)]})


def ledger_cost(app) -> float:
    ledger = app.extensions["aisix"].ledger
    assert ledger.flush(10)
    return sum(r["cost_usd"] or 0 for r in ledger.query(limit=1000))


def spent(app, scope="key", name="dev") -> float:
    r = app.test_client().get("/admin/v1/budgets", headers=auth(ADMIN_KEY))
    return next(b["spent"] for b in r.get_json()["data"] if (b["scope"], b["name"]) == (scope, name))


@pytest.fixture
def budgeted(make_app, config, tmp_path, monkeypatch):
    """An app with priced dalle (per image) and chat-prod (per token) and a way to set budgets
    (tests/test_budgets.py, tests/test_spend_counting.py)."""
    monkeypatch.setattr(Gateway, "settle_s", 0.0)
    monkeypatch.setattr(Gateway, "watch_interval_s", 0.05)
    named(config, "models", "dalle")["pricing"] = PER_IMAGE
    named(config, "models", "chat-prod")["pricing"] = PER_TOKEN

    def make(key=None, dalle=None, chat=None):
        if key:
            named(config, "api_keys", "dev")["budget"] = key
        if dalle:
            named(config, "models", "dalle")["budget"] = dalle
        if chat:
            named(config, "models", "chat-prod")["budget"] = chat
        app = make_app(config)
        return app, app.test_client()

    make.config = config
    return make
