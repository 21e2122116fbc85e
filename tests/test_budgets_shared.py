"""Budgets through the real gunicorn: held across workers (SQLite) and across two gateways
(Redis), and the spend equal to the ledger's cost_usd after a SIGTERM under load."""

from __future__ import annotations

import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import redis
import requests

from aisix_flask.policy.budgets import period
from aisix_flask.stores.spend import SPEND_PREFIX

from .integration import ENV, LOAD_KEY, gateway_config
from .serving import Gunicorn

REDIS_URL = "redis://127.0.0.1:6379/13"
DALLE = (
    "{display_name: dalle, provider: openai, model_name: dall-e-3, provider_key: openai-main, timeout_s: 2}"
)
PRICED_DALLE = (
    "{display_name: dalle, provider: openai, model_name: dall-e-3, provider_key: openai-main, timeout_s: 2,"
    " pricing: {per_image: {1024x1024: {standard: 0.04}}, defaults: {size: 1024x1024, quality: standard}}}"
)
CHAT = (
    "  - {display_name: chat-prod, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main,"
    " pricing: {per_million_tokens: {input: 1000, output: 2000}}}\n"  # 0.01 + 0.002/word (fake: 10 in)
)


def budget_config(tmp_path, fake, name: str, budget: str | None, storage_url: str | None = None):
    """The integration config; the load key is ``name`` with ``budget``; dalle and chat-prod priced."""
    load = f"{name}, budget: {budget}" if budget else name
    path = gateway_config(tmp_path, fake, storage_url=storage_url, load=load)
    text = path.read_text().replace(DALLE, PRICED_DALLE).replace("models:\n", "models:\n" + CHAT, 1)
    path.write_text(text)
    return path


def generate(url: str, prompt: str = "[sleep:0.2] p") -> int:
    body = {"model": "dalle", "prompt": prompt}
    return requests.post(
        f"{url}/v1/images/generations", json=body, headers={"x-api-key": LOAD_KEY}, timeout=30
    ).status_code


def chat(url: str) -> int:
    body = {"model": "chat-prod", "messages": [{"role": "user", "content": "[say:one two three]"}]}
    return requests.post(
        f"{url}/v1/chat/completions", json=body, headers={"x-api-key": LOAD_KEY}, timeout=30
    ).status_code


def ledger_cost(tmp_path, name: str) -> float:
    with sqlite3.connect(tmp_path / "usage.db") as db:
        (total,) = db.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE api_key = ?", (name,)
        ).fetchone()
    return total


def sqlite_spend(tmp_path, name: str, period_name: str = "day") -> float:
    pid, _ = period(period_name, datetime.now(UTC))
    with sqlite3.connect(tmp_path / "ratelimit.db") as db:
        row = db.execute("SELECT nanos FROM spend_nanos WHERE key = ?", (f"key:{name}:{pid}",)).fetchone()
    return row[0] / 1e9 if row else 0.0


def test_a_per_image_budget_holds_exactly_across_four_workers(tmp_path, fake):
    """Twenty concurrent 0.04 USD generations under a 0.40 budget: ten, whichever worker."""
    name = f"load-{uuid.uuid4().hex[:6]}"
    server = Gunicorn(
        budget_config(tmp_path, fake, name, "{usd: 0.4, period: day}"), workers=4, threads=8, env=ENV
    )
    try:
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: generate(server.url), range(20)))
    finally:
        assert server.stop() == 0
    assert sorted(statuses) == [200] * 10 + [429] * 10
    assert sqlite_spend(tmp_path, name) == pytest.approx(0.4) == ledger_cost(tmp_path, name)


def test_two_gateways_share_a_budget_through_redis(tmp_path_factory, fake):
    """Two hosts, one Redis: per-image requests stop at the budget exactly; per-token ones once it
    is spent (the overshoot is what was in flight); spend equals both ledgers together."""
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    name = f"load-{uuid.uuid4().hex[:6]}"
    paths = [tmp_path_factory.mktemp(f"host{i}") for i in range(2)]
    servers = [
        Gunicorn(
            budget_config(p, fake, name, "{usd: 0.2, period: week}", REDIS_URL), workers=2, threads=8, env=ENV
        )
        for p in paths
    ]
    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: generate(servers[i % 2].url), range(16)))
        assert sorted(statuses) == [200] * 5 + [429] * 11
        pid, _ = period("week", datetime.now(UTC))
        connection.set(f"{SPEND_PREFIX}key:{name}:{pid}", 0)  # a fresh start for the token-priced part
        chats = [chat(servers[i % 2].url) for i in range(30)]
        assert chats.count(200) == 13 and set(chats[13:]) == {429}  # 13 x 0.016 = 0.208 >= 0.2
    finally:
        for server in servers:
            assert server.stop() == 0
    total = sum(ledger_cost(p, name) for p in paths)
    spend = int(connection.get(f"{SPEND_PREFIX}key:{name}:{pid}")) / 1e9
    assert spend == pytest.approx(13 * 0.016) and total == pytest.approx(0.2 + 13 * 0.016)
    connection.flushdb()


@pytest.mark.parametrize("budget", ["{usd: 1000, period: month}", None])
def test_spend_equals_the_ledger_after_a_sigterm_under_load(tmp_path, fake, budget):
    """Every request the stopping gateway accepted is answered, recorded and counted: the key's
    spend is the sum of the rows' cost_usd, to the micro-dollar, whether its requests were counted
    at once (under a budget) or a few at a time (none)."""
    name = f"load-{uuid.uuid4().hex[:6]}"
    server = Gunicorn(budget_config(tmp_path, fake, name, budget), workers=4, threads=8, env=ENV)
    answered: list[int] = []

    def one(i: int) -> None:
        try:
            answered.append(generate(server.url) if i % 2 else chat(server.url))
        except requests.ConnectionError:
            pass  # sent after the stop began: refused, never accepted

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(one, i) for i in range(300)]
        time.sleep(1.0)
        assert server.stop() == 0
        for f in futures:
            f.result()
    assert len(answered) >= 32 and set(answered) == {200}
    assert sqlite_spend(tmp_path, name, "month") == pytest.approx(ledger_cost(tmp_path, name), abs=1e-9)
    assert ledger_cost(tmp_path, name) > 0


def test_a_token_priced_image_budget_stops_once_spent(tmp_path, fake):
    """gpt-image's tokens are known from the answer (fake: 12 in, 272 out per image): requests pass
    while the budget is not yet spent, then 429 until the period ends."""
    name = f"load-{uuid.uuid4().hex[:6]}"
    config = budget_config(tmp_path, fake, name, "{usd: 0.03, period: day}")
    image_prod = (
        "{display_name: image-prod, provider: openai, model_name: gpt-image-1, provider_key: openai-main}"
    )
    priced = (
        image_prod[:-1]
        + ", pricing: {per_million_tokens: {input_text: 5, input_image: 10, output_image: 40}}}"
    )
    config.write_text(config.read_text().replace(image_prod, priced))
    server = Gunicorn(config, workers=2, threads=4, env=ENV)
    try:
        body = {"model": "image-prod", "prompt": "p"}
        statuses = [
            requests.post(
                f"{server.url}/v1/images/generations", json=body, headers={"x-api-key": LOAD_KEY}, timeout=30
            ).status_code
            for _ in range(5)
        ]
    finally:
        assert server.stop() == 0
    each = (12 * 5 + 272 * 40) / 1e6  # 0.01094
    assert statuses == [200, 200, 200, 429, 429]  # 0.0219 < 0.03 admits the third: 0.0328
    assert sqlite_spend(tmp_path, name) == pytest.approx(3 * each) == ledger_cost(tmp_path, name)
