"""Idempotency-Key: never bill an image twice. Both stores (SQLite, Redis), and across workers/hosts."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from responses import matchers
from urllib3.exceptions import NewConnectionError

from .conftest import IMAGES_URL, LIMITED_KEY, auth, hold_slot, named
from .integration import DEV_KEY, ENV, gateway_config
from .serving import Gunicorn

ROUTE = "/v1/images/generations"
REDIS_URL = "redis://127.0.0.1:6379/12"
BODY = {"model": "image-prod", "prompt": "a lighthouse"}
USAGE = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
ANSWER = {"created": 1, "data": [{"b64_json": "aGk="}], "usage": USAGE}


@pytest.fixture(params=["sqlite", "redis"])
def build(request, make_app, config):
    if request.param == "redis":
        config["gateway"]["ratelimit"]["storage_url"] = REDIS_URL
        redis.Redis.from_url(REDIS_URL).flushdb()

    def make(**settings):
        config["gateway"]["idempotency"] = settings
        return make_app(config)

    yield make
    if request.param == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()


def once(upstream, answer=ANSWER, status=200, **kwargs):
    kwargs.setdefault("json", answer)
    sent = matchers.json_params_matcher({**BODY, "model": "gpt-image-1"})
    upstream.post(IMAGES_URL, status=status, match=[sent], **kwargs)


def post(client, key, body=BODY, caller=None):
    headers = {**(auth(caller) if caller else auth()), "Idempotency-Key": key}
    return client.post(ROUTE, headers=headers, json=body)


def rows(app):
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    return list(reversed(ledger.query(limit=100)))


def test_a_repeat_gets_the_stored_answer(build, upstream):
    app = build()
    client = app.test_client()
    once(upstream)
    first, second = post(client, "k-1"), post(client, "k-1")
    assert len(upstream.calls) == 1
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.data == first.data and second.headers["Content-Type"] == first.headers["Content-Type"]
    assert second.headers["x-aisix-idempotent-replay"] == "true"
    assert "x-aisix-idempotent-replay" not in first.headers
    original, replay = rows(app)
    assert (original["idempotent_replay"], original["total_tokens"]) == (False, 12)
    assert (replay["idempotent_replay"], replay["total_tokens"], replay["images"]) == (True, 0, 0)
    assert replay["status"] == 200


def test_keys_belong_to_their_caller_key(build, upstream):
    client = build().test_client()
    dalle = {"model": "dalle", "prompt": "a lighthouse"}
    for _ in range(2):
        upstream.post(IMAGES_URL, json=ANSWER)
    assert post(client, "shared", dalle).status_code == 200
    assert post(client, "shared", dalle, caller=LIMITED_KEY).headers.get("x-aisix-idempotent-replay") is None
    assert len(upstream.calls) == 2


def test_another_body_is_refused(build, upstream):
    client = build().test_client()
    once(upstream)
    post(client, "k-2")
    r = post(client, "k-2", {**BODY, "prompt": "a different lighthouse"})
    assert (r.status_code, r.get_json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert r.headers["x-should-retry"] == "false"
    assert len(upstream.calls) == 1


def test_answers_expire(build, upstream):
    client = build(ttl_s=0.3).test_client()
    once(upstream)
    once(upstream)
    post(client, "k-3")
    time.sleep(1.1)  # Redis expiry has one-second resolution
    assert "x-aisix-idempotent-replay" not in post(client, "k-3").headers
    assert len(upstream.calls) == 2


def test_an_answer_over_the_cap_is_not_kept_and_never_regenerated(build, upstream):
    client = build(max_answer_bytes=10).test_client()
    once(upstream)
    assert post(client, "k-4").status_code == 200  # the caller still gets its answer
    r = post(client, "k-4")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "idempotency_answer_not_stored")
    assert "max_answer_bytes" in r.get_json()["error"]["message"]
    assert len(upstream.calls) == 1


def test_an_upstream_failure_is_the_kept_answer(build, upstream):
    client = build().test_client()
    once(upstream, status=500, answer={"error": {"message": "boom"}})
    first, second = post(client, "k-5"), post(client, "k-5")
    assert (first.status_code, second.status_code) == (502, 502)
    assert second.get_json() == first.get_json() and second.headers["x-should-retry"] == "false"
    assert second.headers["x-aisix-idempotent-replay"] == "true"
    assert len(upstream.calls) == 1  # the upstream may have generated: not asked again


def test_a_refusal_before_sending_frees_the_key(build, upstream, config):
    import requests as rq

    app = build()
    client = app.test_client()
    upstream.post(IMAGES_URL, body=rq.ConnectionError(NewConnectionError(None, "refused")))
    assert post(client, "k-6").status_code == 502  # never connected: nothing was generated
    once(upstream)
    r = post(client, "k-6")
    assert r.status_code == 200 and "x-aisix-idempotent-replay" not in r.headers


def test_a_rate_limit_refusal_frees_the_key(build, upstream, config):
    named(config, "api_keys", "dev")["rate_limit"] = {"concurrency": 1}
    app = build()
    limiter, client = app.extensions["aisix"].limiter, app.test_client()
    held = hold_slot(app)
    assert post(client, "k-7").status_code == 429
    limiter.finish(held)
    once(upstream)
    assert post(client, "k-7").status_code == 200


@pytest.mark.parametrize("key", ["", "x" * 256, "bad key", "ünïcode"])
def test_malformed_keys(build, key):
    r = post(build().test_client(), key)
    assert (r.status_code, r.get_json()["error"]["param"]) == (400, "Idempotency-Key")


def test_a_running_request_is_waited_for_then_409(build, upstream):
    import hashlib
    import json

    app = build(wait_s=0.3)
    store = app.extensions["aisix"].idempotency.store
    key = hashlib.sha256(b"dev\0k-8").hexdigest()
    digest = hashlib.sha256(json.dumps(BODY, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    store.claim(key, digest, 60, 600)  # another worker is generating it right now
    started = time.monotonic()
    r = post(app.test_client(), "k-8")
    assert time.monotonic() - started >= 0.3
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "idempotency_in_progress")
    assert r.headers["Retry-After"] and r.headers["x-should-retry"] == "true"
    assert not upstream.calls


def test_a_crashed_holder_is_taken_over(build, upstream):
    import hashlib
    import json

    app = build(wait_s=5)
    store = app.extensions["aisix"].idempotency.store
    key = hashlib.sha256(b"dev\0k-9").hexdigest()
    digest = hashlib.sha256(json.dumps(BODY, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    store.claim(key, digest, 0.3, 600)  # its worker died 0.3 s into the request
    once(upstream)
    r = post(app.test_client(), "k-9")
    assert r.status_code == 200 and "x-aisix-idempotent-replay" not in r.headers


def concurrent_same_key(urls: list[str], fake, key: str) -> list[requests.Response]:
    prompt = f"[sleep:1] once {key}"

    def one(i: int) -> requests.Response:
        return requests.post(
            f"{urls[i % len(urls)]}/v1/images/generations",
            json={"model": "image-prod", "prompt": prompt},
            headers={"x-api-key": DEV_KEY, "Idempotency-Key": key},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(one, range(4)))
    calls = requests.get(f"{fake.url[:-3]}/_calls", timeout=5).json()
    sent = [c for c in calls if c["body"].get("prompt") == prompt]
    assert len(sent) == 1  # one generation, whatever the number of workers or hosts
    return answers


def test_a_repeat_on_another_worker_waits_for_the_first(tmp_path, fake):
    server = Gunicorn(gateway_config(tmp_path, fake), workers=2, threads=8, env=ENV)
    try:
        answers = concurrent_same_key([server.url], fake, f"worker-{uuid.uuid4().hex[:6]}")
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("x-aisix-idempotent-replay") == "true" for a in answers) == 3


def test_two_hosts_share_keys_through_redis(tmp_path, fake):
    redis.Redis.from_url(REDIS_URL).flushdb()
    servers = []
    try:
        for host in ("a", "b"):
            (tmp_path / host).mkdir()
            servers.append(Gunicorn(gateway_config(tmp_path / host, fake, storage_url=REDIS_URL), env=ENV))
        answers = concurrent_same_key([s.url for s in servers], fake, f"hosts-{uuid.uuid4().hex[:6]}")
    finally:
        for server in servers:
            server.stop()
        redis.Redis.from_url(REDIS_URL).flushdb()
    assert [a.status_code for a in answers] == [200] * 4


def test_a_broken_store(build, upstream, monkeypatch):
    import sqlite3

    app = build()
    store = app.extensions["aisix"].idempotency.store

    def down(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "claim", down)  # cannot check the key: refuse rather than bill twice
    r = post(app.test_client(), "k-10")
    assert (r.status_code, r.get_json()["error"]["code"], r.headers["x-should-retry"]) == (
        503,
        "idempotency_unavailable",
        "true",
    )
    assert not upstream.calls
    monkeypatch.undo()
    monkeypatch.setattr(store, "finish", down)  # cannot keep the answer: the caller still gets it
    once(upstream)
    assert post(app.test_client(), "k-11").status_code == 200
