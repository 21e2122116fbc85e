"""POST /v1/images/generations: every row of the request path (docs/contract.md), against ``responses``."""

from __future__ import annotations

import base64
import json

import pytest

from .conftest import (
    CALLER_KEY,
    DISABLED_KEY,
    EXPIRED_KEY,
    LIMITED_KEY,
    SECRETS,
    UPSTREAM_KEY,
    assert_envelope,
    auth,
    expect_upstream,
)

ROUTE = "/v1/images/generations"
B64_ANSWER = {
    "created": 1713833628,
    "data": [{"b64_json": "aGVsbG8="}, {"b64_json": "d29ybGQ="}],
    "usage": {
        "input_tokens": 50,
        "output_tokens": 4160,
        "total_tokens": 4210,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
    },
}


# -- success --


def test_seed_request_returns_upstream_json_unchanged(client, upstream, ledger_rows):
    raw = b'{"created": 1710000000, "data": [{"url": "https://example.com/generated-image.png"}]}'
    expect_upstream(
        upstream,
        {"model": "gpt-image-1", "prompt": "A minimal illustration of an AI gateway"},
        body=raw,
        json=None,
        content_type="application/json",
    )
    r = client.post(
        ROUTE,
        headers=auth(),
        json={"model": "image-prod", "prompt": "A minimal illustration of an AI gateway"},
    )
    assert r.status_code == 200
    assert r.data == raw
    assert r.headers["Content-Type"] == "application/json"
    assert len(r.get_json()["data"]) == 1
    [row] = ledger_rows()
    assert row["request_id"] == r.headers["x-aisix-request-id"]
    assert row["api_key"] == "dev"
    assert row["route"] == ROUTE
    assert (row["model"], row["upstream_model"], row["provider"]) == ("image-prod", "gpt-image-1", "openai")
    assert (row["status"], row["error_code"]) == (200, None)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (0, 0, 0)
    assert row["images"] == 1
    assert (row["size"], row["quality"], row["n"]) == (None, None, None)
    assert row["latency_ms"] >= row["upstream_latency_ms"] >= 0
    assert row["client_ip"] == "127.0.0.1"
    assert row["created_at"].endswith("Z")


def test_upstream_gets_fresh_headers_never_the_callers(client, upstream):
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p"})
    r = client.post(
        ROUTE,
        headers={
            "authorization": f"bearer {CALLER_KEY}",
            "x-api-key": CALLER_KEY,
            "Cookie": "session=abc",
            "Connection": "keep-alive, x-secret",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "x-request-id": "trace-42",
        },
        json={"model": "image-prod", "prompt": "p"},
    )
    assert r.status_code == 200
    assert r.headers["x-aisix-request-id"] == "trace-42"
    sent = upstream.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["x-request-id"] == "trace-42"
    assert sent.headers["User-Agent"].startswith("aisix-flask/")
    for name in ("x-api-key", "Cookie", "Proxy-Authorization", "x-secret"):
        assert name not in sent.headers
    assert CALLER_KEY not in json.dumps(dict(sent.headers))
    assert not sent.req_kwargs["proxies"]  # trust_env is off: no proxy or .netrc from the environment
    assert sent.req_kwargs["timeout"] == (5, 300)


def test_only_model_is_rewritten(client, upstream):
    body = {
        "model": "image-prod",
        "prompt": "a lighthouse, ünïcode ✓",
        "n": 2,
        "size": "1024x1536",
        "quality": "high",
        "background": "transparent",
        "moderation": "low",
        "output_format": "webp",
        "output_compression": 80,
        "user": "u-1",
        "future_field": {"nested": [1, 2.5, None, True]},
    }
    expect_upstream(upstream, {**body, "model": "gpt-image-1"}, answer=B64_ANSWER)
    r = client.post(ROUTE, headers=auth(), json=body)
    assert r.status_code == 200
    assert r.get_json() == B64_ANSWER


def test_b64_answer_with_usage_is_recorded(client, upstream, ledger_rows):
    body = {"model": "image-prod", "prompt": "p", "n": 2, "size": "1024x1024", "quality": "high"}
    expect_upstream(upstream, {**body, "model": "gpt-image-1"}, answer=B64_ANSWER)
    r = client.post(ROUTE, headers=auth(), json=body)
    assert r.get_json() == B64_ANSWER
    [row] = ledger_rows()
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (50, 4160, 4210)
    assert (row["images"], row["n"], row["size"], row["quality"]) == (2, 2, "1024x1024", "high")


def test_curl_form_content_type_is_read_as_json(client, upstream):
    expect_upstream(upstream, {"model": "dall-e-3", "prompt": "p"})
    r = client.post(
        ROUTE,
        headers={**auth(), "Content-Type": "application/x-www-form-urlencoded"},
        data='{"model": "dalle", "prompt": "p"}',
    )
    assert r.status_code == 200


def test_wildcard_alias_sends_captured_model(client, upstream, ledger_rows):
    expect_upstream(upstream, {"model": "gpt-image-1-mini", "prompt": "p"})
    r = client.post(ROUTE, headers=auth(), json={"model": "openai/gpt-image-1-mini", "prompt": "p"})
    assert r.status_code == 200
    [row] = ledger_rows()
    assert (row["model"], row["upstream_model"]) == ("openai/gpt-image-1-mini", "gpt-image-1-mini")


def test_model_timeout_overrides_gateway_timeout(client, upstream):
    expect_upstream(upstream, {"model": "dall-e-2", "prompt": "p"})
    client.post(ROUTE, headers=auth(), json={"model": "quick", "prompt": "p"})
    assert upstream.calls[0].request.req_kwargs["timeout"] == (5, 1.5)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {CALLER_KEY}"},
        {"Authorization": f"BEARER   {CALLER_KEY}"},
        {"x-api-key": CALLER_KEY},
        {"Authorization": "Basic Zm9vOmJhcg==", "x-api-key": CALLER_KEY},  # x-api-key wins over Basic
        {"Authorization": "Basic " + base64.b64encode(f"anyone:{CALLER_KEY}".encode()).decode()},
    ],
)
def test_key_forms(client, upstream, headers):
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p"})
    assert client.post(ROUTE, headers=headers, json={"model": "image-prod", "prompt": "p"}).status_code == 200


# -- step 1: caller key --


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "invalid_api_key"),
        ({"Authorization": "Bearer "}, "invalid_api_key"),
        ({"Authorization": "Bearer not-a-key"}, "invalid_api_key"),
        ({"Authorization": f"Basic {CALLER_KEY}"}, "invalid_api_key"),
        ({"Authorization": f"Bearer {UPSTREAM_KEY}"}, "invalid_api_key"),
        (auth(DISABLED_KEY), "api_key_disabled"),
        (auth(EXPIRED_KEY), "api_key_expired"),
    ],
)
def test_authentication_failures(client, upstream, ledger_rows, headers, code):
    r = client.post(ROUTE, headers=headers, json={"model": "image-prod", "prompt": "p"})
    assert_envelope(r, 401, "authentication_error", code)
    assert "x-aisix-request-id" in r.headers
    assert ledger_rows() == []  # nothing is recorded before the caller is known
    assert not upstream.calls


# -- steps 4 to 9, in order --


def test_unknown_model_is_404(client, upstream, ledger_rows):
    r = client.post(ROUTE, headers=auth(), json={"model": "nope", "prompt": "p"})
    assert_envelope(r, 404, "invalid_request_error", "model_not_found", "model")
    [row] = ledger_rows()
    assert (row["status"], row["model"], row["upstream_model"]) == (404, "nope", None)
    assert not upstream.calls


def test_model_not_allowed_is_403(client, upstream, ledger_rows):
    r = client.post(ROUTE, headers=auth(LIMITED_KEY), json={"model": "image-prod", "prompt": "p"})
    assert_envelope(r, 403, "permission_error", "model_not_allowed")
    [row] = ledger_rows()
    assert (row["status"], row["api_key"], row["error_code"]) == (403, "limited", "model_not_allowed")
    assert not upstream.calls


def test_allowed_glob_admits_model(client, upstream):
    expect_upstream(upstream, {"model": "dall-e-3", "prompt": "p"})
    assert (
        client.post(ROUTE, headers=auth(LIMITED_KEY), json={"model": "dalle", "prompt": "p"}).status_code
        == 200
    )


def test_non_openai_provider_is_400_before_policy(client, upstream, ledger_rows):
    # The prompt would trip the guardrail: the provider check comes first, so it is a 400.
    r = client.post(ROUTE, headers=auth(), json={"model": "deepseek-image", "prompt": "forbidden phrase"})
    error = assert_envelope(r, 400, "invalid_request_error", "unsupported_provider", "model")
    assert "provider" in error["message"] and "'openai'" in error["message"]
    [row] = ledger_rows()
    assert (row["status"], row["provider"]) == (400, "deepseek")
    assert not upstream.calls


def test_openai_provider_without_image_bridge_is_501(client, upstream, ledger_rows):
    r = client.post(ROUTE, headers=auth(), json={"model": "compat-image", "prompt": "forbidden phrase"})
    error = assert_envelope(r, 501, "not_implemented", "unsupported_operation")
    assert "openai-compatible" in error["message"] and "adapter" in error["message"]
    [row] = ledger_rows()
    assert (row["status"], row["error_code"]) == (501, "unsupported_operation")
    assert not upstream.calls


def test_missing_upstream_credential_is_503(client, upstream):
    r = client.post(ROUTE, headers=auth(), json={"model": "keyless", "prompt": "p"})
    error = assert_envelope(r, 503, "provider_error", "provider_unavailable")
    assert "no-key" in error["message"]
    assert not upstream.calls


@pytest.mark.parametrize(
    "prompt",
    ["a FORBIDDEN phrase here", "my Password = hunter2", "PASSWORD=x"],
)
def test_guardrail_blocks_without_echoing(client, upstream, ledger_rows, prompt):
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": prompt})
    error = assert_envelope(r, 422, "content_filter", "content_policy_violation")
    assert "no-secrets" in error["message"]
    for word in ("forbidden", "password", "hunter2"):
        assert word not in r.get_data(as_text=True).lower()
    [row] = ledger_rows()
    assert (row["status"], row["error_code"]) == (422, "content_policy_violation")
    assert not upstream.calls


def test_guardrail_lets_ordinary_prompts_through(client, upstream):
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "a forbidden-city phrase book"})
    r = client.post(
        ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "a forbidden-city phrase book"}
    )
    assert r.status_code == 200


# -- the rest of the HTTP surface --


def test_unknown_path_and_wrong_method_use_the_envelope(client):
    r = client.get("/v1/nope")
    assert_envelope(r, 404, "invalid_request_error", "not_found")
    assert "x-aisix-request-id" in r.headers
    r = client.get(ROUTE)
    assert_envelope(r, 405, "invalid_request_error", "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_unsafe_request_id_is_replaced(client):
    r = client.get("/livez", headers={"x-request-id": "bad id; <script>"})
    assert r.headers["x-aisix-request-id"] != "bad id; <script>"
    assert len(r.headers["x-aisix-request-id"]) == 32


def test_unexpected_bug_is_500_envelope_and_recorded(client, monkeypatch, ledger_rows):
    from aisix_flask.proxy import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(pipeline, "check_input", broken)
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    assert_envelope(r, 500, "server_error", "internal_error")
    assert "bug" not in r.get_data(as_text=True)
    assert ledger_rows()[0]["status"] == 500


def test_ledger_never_holds_secrets_or_prompt(client, upstream, ledger_rows):
    expect_upstream(
        upstream, {"model": "gpt-image-1", "prompt": "a very particular prompt"}, answer=B64_ANSWER
    )
    client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "a very particular prompt"})
    dumped = json.dumps(ledger_rows())
    for secret in (*SECRETS, "particular", "aGVsbG8="):
        assert secret not in dumped
