"""Rate limits and concurrency slots through the route (the stores themselves: test_limit_store.py)."""

from __future__ import annotations

import math
import sqlite3
import time

import pytest
from responses import matchers

from .conftest import IMAGES_URL, LIMITED_KEY, auth, away_from_a_minute_boundary, hold_slot, named

ROUTE = "/v1/images/generations"
USAGE_ANSWER = {
    "created": 1,
    "data": [{"b64_json": "aGk="}],
    "usage": {"input_tokens": 10, "output_tokens": 290, "total_tokens": 300},
}


@pytest.fixture(autouse=True)
def _clear_of_window_edges():
    away_from_a_minute_boundary()


@pytest.fixture
def limited(make_app, config):
    """Build an app whose 'dev' key and 'image-prod'/'openai/*' models carry the given limits."""

    def build(key=None, model=None, wildcard=None):
        if key:
            named(config, "api_keys", "dev")["rate_limit"] = key
        if model:
            named(config, "models", "image-prod")["rate_limit"] = model
        if wildcard:
            named(config, "models", "openai/*")["rate_limit"] = wildcard
        return make_app(config)

    return build


def ok_upstream(upstream, times: int = 1, answer=None, model: str = "gpt-image-1"):
    for _ in range(times):
        upstream.post(IMAGES_URL, json=answer or {"created": 1, "data": [{"url": "u"}]},
                      match=[matchers.json_params_matcher({"model": model, "prompt": "p"})])  # fmt: skip


def post(client, model="image-prod", prompt="p", key=None):
    return client.post(ROUTE, headers=auth(key) if key else auth(), json={"model": model, "prompt": prompt})


def assert_429(r, name: str):
    assert r.status_code == 429
    error = r.get_json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert name in error["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 86400
    return int(r.headers["Retry-After"])


def test_key_rpm(limited, upstream):
    client = limited(key={"rpm": 2}).test_client()
    ok_upstream(upstream, 2)
    assert [post(client).status_code for _ in range(2)] == [200, 200]
    retry_after = assert_429(post(client), "API key 'dev' allows 2 requests per minute")
    # Aligned minute windows, nothing in the previous one: room again when this minute ends.
    assert abs(retry_after - math.ceil(60 - time.time() % 60)) <= 1
    assert len(upstream.calls) == 2
    rows = client.application.extensions["aisix"].ledger
    rows.flush(10)
    assert rows.query(limit=1)[0]["error_code"] == "rate_limit_exceeded"


def test_model_rpm_counts_every_alias_of_a_wildcard_row(limited, upstream):
    client = limited(wildcard={"rpm": 2}).test_client()
    ok_upstream(upstream, model="a")
    ok_upstream(upstream, model="b")
    assert post(client, "openai/a").status_code == 200
    assert post(client, "openai/b").status_code == 200
    assert_429(post(client, "openai/c"), "model 'openai/*' allows 2 requests per minute")


def test_a_refusal_by_the_model_does_not_spend_the_keys_window(limited, upstream):
    client = limited(key={"rpm": 2}, model={"rpm": 1}).test_client()
    ok_upstream(upstream)
    ok_upstream(upstream, model="dall-e-3")
    assert post(client).status_code == 200
    assert_429(post(client), "model 'image-prod'")
    assert_429(post(client), "model 'image-prod'")
    assert post(client, "dalle").status_code == 200  # the key's second request is still there


def test_rejected_requests_spend_nothing(limited, upstream):
    client = limited(key={"rpm": 1, "concurrency": 1}).test_client()
    for _ in range(3):
        assert post(client, prompt="forbidden phrase").status_code == 422  # guardrail
        assert post(client, model="deepseek-image").status_code == 400  # provider
        assert post(client, model="compat-image").status_code == 501
        assert post(client, model="nope").status_code == 404
    ok_upstream(upstream)
    assert post(client).status_code == 200


def test_tpm_blocks_the_next_request_once_spent(limited, upstream):
    client = limited(key={"tpm": 500}).test_client()
    ok_upstream(upstream, 2, answer=USAGE_ANSWER)
    assert post(client).status_code == 200  # 300 tokens charged after the answer
    assert post(client).status_code == 200  # 300 < 500: still room; now 600 are spent
    assert_429(post(client), "API key 'dev' allows 500 tokens per minute")
    assert len(upstream.calls) == 2


def test_tpd_and_rpd_are_day_windows(limited, upstream):
    client = limited(model={"rpd": 1}).test_client()
    ok_upstream(upstream)
    assert post(client).status_code == 200
    retry_after = assert_429(post(client), "model 'image-prod' allows 1 requests per day")
    assert abs(retry_after - math.ceil(86400 - time.time() % 86400)) <= 1


def test_concurrency_slot(limited, upstream):
    app = limited(key={"concurrency": 1})
    limiter, client = app.extensions["aisix"].limiter, app.test_client()
    held = hold_slot(app)  # another request is in flight
    assert_429(post(client), "API key 'dev' allows 1 concurrent requests")
    limiter.finish(held)
    ok_upstream(upstream)
    assert post(client).status_code == 200
    assert slots_taken(app) == 0


def slots_taken(app) -> int:
    path = app.extensions["aisix"].limiter.storage.path
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM slots WHERE expires_at > ?", (time.time(),)).fetchone()[0]


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "json": {"error": {"message": "x"}}},
        {"status": 400, "json": {"error": {"message": "x", "code": "bad"}}},
        {"body": __import__("requests").exceptions.ReadTimeout("slow")},
        {"body": __import__("requests").exceptions.ConnectionError("reset")},
        {"status": 200, "body": "not json"},
    ],
)
def test_slot_released_on_every_upstream_failure(limited, upstream, answer):
    app = limited(key={"concurrency": 1})
    upstream.post(IMAGES_URL, **answer)
    assert post(app.test_client()).status_code >= 400
    assert slots_taken(app) == 0


def test_slot_released_when_the_gateway_itself_fails(limited, monkeypatch):
    from aisix_flask.proxy import failover

    app = limited(key={"concurrency": 1})

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(failover, "send", broken)  # after the slot was taken
    assert post(app.test_client()).status_code == 500
    assert slots_taken(app) == 0


def test_a_leaked_slot_expires(limited, upstream):
    app = limited(key={"concurrency": 1})
    hold_slot(app, 0.2)  # a worker that died
    assert post(app.test_client()).status_code == 429
    time.sleep(0.3)
    ok_upstream(upstream)
    assert post(app.test_client()).status_code == 200


def test_an_unreachable_store_lets_requests_through(limited, upstream, monkeypatch, event_lines):
    app = limited(key={"rpm": 1})
    storage = app.extensions["aisix"].limiter.storage

    asked = []

    def down(*args, **kwargs):
        asked.append(args)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(storage, "admit_all", down)  # SQLite admits in one transaction
    monkeypatch.setattr(storage, "get_sliding_window", down)  # not asked again for the headers
    ok_upstream(upstream, 2)
    answers = [post(app.test_client()) for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200]
    assert not any(name.startswith("x-ratelimit") for r in answers for name in r.headers.keys())
    assert len(asked) == 2  # once a request; told once (a line per interval, with its count)
    [line] = event_lines
    assert (line["event"], line["store"], line["failures"]) == ("store_unavailable", "ratelimit", 1)
    assert "requests let through" in line["doing"] and "disk I/O error" in line["error"]


def test_keys_without_limits_touch_no_store(limited, upstream, monkeypatch):
    app = limited(key={"rpm": 5}, model=None)
    storage = app.extensions["aisix"].limiter.storage
    monkeypatch.setattr(storage, "get_sliding_window", None)  # would fail if called
    monkeypatch.setattr(storage, "admit_all", None)
    ok_upstream(upstream, model="dall-e-3")
    assert post(app.test_client(), model="dalle", key=LIMITED_KEY).status_code == 200


def test_answers_carry_the_headers_failed_ones_too(limited, upstream):
    app = limited(key={"rpm": 10})
    client = app.test_client()
    ok_upstream(upstream)
    assert post(client).headers["x-ratelimit-remaining-requests"] == "9"
    upstream.post(IMAGES_URL, status=500, json={"error": {"message": "down"}})
    r = post(client)
    assert r.status_code == 502 and r.headers["x-ratelimit-remaining-requests"] == "8"
    assert (
        "x-ratelimit-limit-requests" not in post(client, key="limited-SECRET-0d77aa", model="dalle").headers
    )


def test_durations_read_like_openais():
    from aisix_flask.policy.limit_headers import duration

    assert [duration(s) for s in (0.02, 1.5, 59.9, 60, 360, 3725)] == [
        "20ms",
        "1.5s",
        "59.9s",
        "1m0s",
        "6m0s",
        "1h2m5s",
    ]
