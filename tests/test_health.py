"""Health signals that tell the truth: /readyz names each store it depends on, aisix_store_up and
aisix_ledger_writer_up read 1 from the start, and a store that is away is told once per interval
with a count, not once per request."""

from __future__ import annotations

import re

import pytest
import requests

from aisix_flask.stores.health import StoreHealth

from .conftest import IMAGES_URL, auth, named
from .integration import ENV, gateway_config
from .serving import Gunicorn

DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1
SQLITE_UP = {"backend": "sqlite", "up": True}


def metric(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def test_readyz_names_each_store_and_whether_it_answers(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {
        "status": "ok",
        "stores": {
            "ledger": {"backend": "sqlite", "up": True, "journal_rows": 0},
            "ratelimit": {"backend": "sqlite", "up": True},
        },
    }


def test_readyz_stays_200_but_says_so_while_the_ratelimit_store_is_away(make_app, config, event_lines):
    """The limiter lets requests through meanwhile: the instance serves, and a probe failing on a
    store every instance shares would take them all out of the load balancer at once."""
    config["gateway"]["ratelimit"]["storage_url"] = DOWN
    client = make_app(config).test_client()
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {
        "status": "degraded",
        "stores": {
            "ledger": {"backend": "sqlite", "up": True, "journal_rows": 0},
            "ratelimit": {"backend": "redis", "up": False},
        },
    }
    assert metric("aisix_store_up", store="ratelimit") == 0
    assert metric("aisix_store_up", store="ledger") == 1
    assert [(line["event"], line["store"], line["doing"]) for line in event_lines] == [
        ("store_unavailable", "ratelimit", "/readyz")
    ]
    assert "127.0.0.1:1" in event_lines[0]["url"]


def test_three_hundred_calls_with_the_store_away_make_one_line(make_app, config, upstream, event_lines):
    config["gateway"]["ratelimit"]["storage_url"] = DOWN
    named(config, "api_keys", "dev")["rate_limit"] = {"rpm": 1000}
    client = make_app(config).test_client()
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    for _ in range(300):
        r = client.post("/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "p"})
        assert r.status_code == 200  # let through
    [line] = event_lines
    assert (line["event"], line["store"], line["backend"], line["failures"]) == (
        "store_unavailable",
        "ratelimit",
        "redis",
        1,
    )
    assert line["interval_s"] == StoreHealth.interval_s and "requests let through" in line["doing"]
    assert set(line) == {
        "time",
        "event",
        "store",
        "backend",
        "url",
        "failures",
        "interval_s",
        "doing",
        "error",
    }


def test_a_line_per_interval_with_the_count_then_one_when_it_answers(event_lines, monkeypatch):
    health = StoreHealth("ratelimit", "redis://user:hunter2@cache.internal:6379/0")
    now = [100.0]
    monkeypatch.setattr("aisix_flask.stores.health.time.monotonic", lambda: now[0])
    for _ in range(300):
        health.failed("rate limits: requests let through", ConnectionError("refused"))
    now[0] += 10.0
    health.failed("rate limits: requests let through", ConnectionError("refused"))
    health.answered()
    health.answered()  # once
    assert [(line["event"], line["failures"]) for line in event_lines] == [
        ("store_unavailable", 1),
        ("store_unavailable", 300),
        ("store_available", 0),
    ]
    assert metric("aisix_store_up", store="ratelimit") == 1
    assert all("hunter2" not in str(line) and "cache.internal:6379" in line["url"] for line in event_lines)


@pytest.mark.parametrize("workers", [2])
def test_the_gauges_read_1_from_the_start(tmp_path, fake, workers):
    """A worker whose ledger writer has not been needed yet has not lost it: an alert on
    aisix_ledger_writer_up must not page after every restart."""
    server = Gunicorn(gateway_config(tmp_path, fake), workers=workers, threads=4, env=ENV)
    try:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    assert re.search(r"^aisix_ledger_writer_up 1\.0$", text, re.M), text
    for store in ("ledger", "ratelimit"):
        assert re.search(rf'^aisix_store_up\{{store="{store}"\}} 1\.0$', text, re.M), text


def test_readyz_does_not_wait_on_a_store_that_never_answers(make_app, config):
    """A Redis that accepts connections and never answers: the probe says so within its own
    timeout, instead of hanging past the load balancer's."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        config["gateway"]["ratelimit"]["storage_url"] = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        client = make_app(config).test_client()
        started = time.monotonic()
        r = client.get("/readyz")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert r.status_code == 200 and r.get_json()["stores"]["ratelimit"] == {"backend": "redis", "up": False}
    assert took < 3, took


def test_the_store_is_up_again_once_a_budget_reads_it(budgeted, upstream, monkeypatch, event_lines):
    """Budgets and idempotency use the rate-limit store too: their successes say it is back."""
    import sqlite3

    from .budgeting import image, images_answer

    app, client = budgeted(key={"usd": 5, "period": "day"})
    store = app.extensions["aisix"].budgets.store
    real = store.reserve

    def down(charges):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "reserve", down)
    assert image(client).status_code == 503
    assert metric("aisix_store_up", store="ratelimit") == 0
    monkeypatch.setattr(store, "reserve", real)
    images_answer(upstream, 1)
    assert image(client).status_code == 200
    assert metric("aisix_store_up", store="ratelimit") == 1
    assert [line["event"] for line in event_lines] == ["store_unavailable", "store_available"]
