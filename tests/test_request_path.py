"""Steps 1 to 13 of the request path (docs/contract.md), once, for every proxied route."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from responses import matchers

from .conftest import CHAT_URL, LIMITED_KEY, assert_envelope, auth, named
from .proxied_routes import CASES

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
routes = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


def rows(app) -> list[dict[str, Any]]:
    ledger = app.extensions["aisix"].ledger
    assert ledger.flush(10)
    return list(reversed(ledger.query()))


@routes
def test_a_valid_request_is_forwarded_once_with_only_model_rewritten(app, client, upstream, case):
    body = {**case.body("a quiet lake"), "extra": {"kept": [1, 2.5, None]}, "user": "u-1"}
    upstream.post(
        case.upstream_url,
        json=case.answer,
        match=[matchers.json_params_matcher({**body, "model": case.upstream_model}, strict_match=True)],
    )
    r = client.post(case.route, headers={**auth(), "x-request-id": "trace-1"}, json=body)
    assert r.status_code == 200
    assert r.get_data() == json.dumps(case.answer).encode()  # 12: the upstream's bytes, as sent
    sent = upstream.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {case.upstream_key}"
    assert sent.headers["x-request-id"] == "trace-1" == r.headers["x-aisix-request-id"]
    [row] = rows(app)
    assert (row["route"], row["model"], row["upstream_model"], row["status"]) == (
        case.route,
        case.model,
        case.upstream_model,
        200,
    )
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == case.tokens


@routes
def test_1_no_key_is_401_and_no_row(app, client, upstream, case):
    r = client.post(case.route, json=case.body("p"))
    assert_envelope(r, 401, "authentication_error", "invalid_api_key")
    assert rows(app) == []


@routes
@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b'{"a": "\\ud800"}', 400, "invalid_value"),
        (b"[1]", 400, "invalid_json"),
    ],
)
def test_2_the_body_must_be_a_json_object(app, client, upstream, case, data, status, code):
    r = client.post(case.route, headers=auth(), data=data)
    assert_envelope(r, status, "invalid_request_error", code, "a" if code == "invalid_value" else None)
    assert [(row["route"], row["error_code"]) for row in rows(app)] == [(case.route, code)]


@routes
def test_2_a_body_over_the_limit_is_413(make_app, config, upstream, case):
    config["gateway"]["request_body_limit_bytes"] = 64
    r = make_app(config).test_client().post(case.route, headers=auth(), json=case.body("x" * 100))
    assert_envelope(r, 413, "invalid_request_error", "request_too_large")


@routes
def test_3_required_fields_and_types_name_the_field(client, upstream, case):
    body = case.body("p")
    for field in ("model", case.required):
        missing = {k: v for k, v in body.items() if k != field}
        r = client.post(case.route, headers=auth(), json=missing)
        assert_envelope(r, 400, "invalid_request_error", "missing_required_parameter", field)
        r = client.post(case.route, headers=auth(), json={**body, field: 7})
        assert_envelope(r, 400, "invalid_request_error", "invalid_value", field)


@routes
def test_4_an_unknown_alias_is_404(client, upstream, case):
    r = client.post(case.route, headers=auth(), json={**case.body("p"), "model": "nope"})
    assert_envelope(r, 404, "invalid_request_error", "model_not_found", "model")


@routes
def test_5_an_alias_the_key_may_not_use_is_403(client, upstream, case):
    r = client.post(case.route, headers=auth(LIMITED_KEY), json=case.body("p"))
    assert_envelope(r, 403, "permission_error", "model_not_allowed")


@routes
def test_6_only_the_image_route_refuses_other_providers(client, upstream, case):
    """deepseek-chat's provider is deepseek: the image route's 400, any other route forwards."""
    body = {**case.body("p"), "model": "deepseek-chat"}
    if case.route.startswith("/v1/images"):  # generations and edits
        r = client.post(case.route, headers=auth(), json=body)
        assert_envelope(r, 400, "invalid_request_error", "unsupported_provider", "model")
    elif case.route == "/v1/rerank":
        upstream.post(case.upstream_url, json=case.answer)
        assert client.post(case.route, headers=auth(), json=body).status_code == 200
    elif case.route == "/v1/responses":  # deepseek speaks chat completions: translated to them
        upstream.post(CHAT_URL, json=CASES["chat"].answer)
        assert client.post(case.route, headers=auth(), json=body).status_code == 200
    else:
        upstream.post(case.upstream_url, json=case.answer)
        assert client.post(case.route, headers=auth(), json=body).status_code == 200


@pytest.mark.parametrize(
    ("case", "model", "forwarded"),
    [
        (CASES["images"], "compat-image", False),  # openai-compatible has no images
        (CASES["image edits"], "compat-image", False),
        (CASES["chat"], "compat-image", True),
        (CASES["embeddings"], "compat-image", True),
        (CASES["rerank"], "chat-prod", False),  # the openai adapter has no rerank
        (CASES["rerank"], "compat-image", True),
        (CASES["responses"], "chat-prod", True),
    ],
)
def test_7_the_adapter_must_implement_the_operation(client, upstream, case, model, forwarded):
    body = {**case.body("p"), "model": model}
    if forwarded:
        upstream.post(case.upstream_url, json=case.answer)
        assert client.post(case.route, headers=auth(), json=body).status_code == 200
    else:
        r = client.post(case.route, headers=auth(), json=body)
        error = assert_envelope(r, 501, "not_implemented", "unsupported_operation")
        assert "adapter" in error["message"]


@routes
def test_8_a_provider_key_without_a_credential_is_503(client, upstream, case):
    r = client.post(case.route, headers=auth(), json={**case.body("p"), "model": "keyless"})
    expected = (501, "unsupported_operation") if case.route == "/v1/rerank" else (503, "provider_unavailable")
    assert (r.status_code, r.get_json()["error"]["code"]) == expected  # rerank: step 7 comes first


@routes
def test_9_input_guardrails_read_the_routes_text(app, client, upstream, case):
    r = client.post(case.route, headers=auth(), json=case.body("a Forbidden Phrase here"))
    error = assert_envelope(r, 422, "content_filter", "content_policy_violation")
    assert "no-secrets" in error["message"] and "Forbidden" not in error["message"]
    assert [row["error_code"] for row in rows(app)] == ["content_policy_violation"]


@routes
def test_10_rate_limits_apply(make_app, config, upstream, case):
    named(config, "api_keys", "dev")["rate_limit"] = {"rpm": 1}
    client = make_app(config).test_client()
    upstream.post(case.upstream_url, json=case.answer)
    assert client.post(case.route, headers=auth(), json=case.body("p")).status_code == 200
    r = client.post(case.route, headers=auth(), json=case.body("p"))
    assert_envelope(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert int(r.headers["Retry-After"]) >= 1


@routes
@pytest.mark.parametrize(("status", "expected"), [(500, 502), (401, 502), (400, 400), (429, 429)])
def test_11_upstream_failures_answer_as_the_table_says(app, client, upstream, case, status, expected):
    upstream.post(
        case.upstream_url, status=status, json={"error": {"message": "m", "type": "t", "code": "c"}}
    )
    r = client.post(case.route, headers=auth(), json=case.body("p"))
    assert r.status_code == expected
    assert r.headers["x-should-retry"] == ("true" if status == 429 else "false")
    assert rows(app)[0]["status"] == expected


@routes
def test_13_every_request_after_step_1_has_one_row_naming_its_route(app, client, upstream, case):
    upstream.post(case.upstream_url, json=case.answer)
    client.post(case.route, headers=auth(), json=case.body("p"))
    client.post(case.route, headers=auth(), json={"model": "nope"})
    client.post(case.route, headers=auth(), data=b"{")
    assert [(r["route"], r["status"]) for r in rows(app)] == [(case.route, s) for s in (200, 400, 400)]


@routes
def test_an_idempotency_key_replays_the_answer(client, upstream, case):
    upstream.post(case.upstream_url, json=case.answer)
    headers = {**auth(), "Idempotency-Key": f"once-{case.route}"}
    first = client.post(case.route, headers=headers, json=case.body("p"))
    again = client.post(case.route, headers=headers, json=case.body("p"))
    assert first.get_data() == again.get_data() and again.headers["x-aisix-idempotent-replay"] == "true"
    assert len(upstream.calls) == 1


# Anthropic's routes answer in Anthropic's envelope: tests/test_messages_served.py drives them.
ANTHROPIC_ROUTES = {"/v1/messages", "/v1/messages/count_tokens"}


def test_every_route_is_listed_here(app):
    """A new proxied route must join this table (and so every test above) and the contract's table
    of routes: what the app serves, what is tested and what is documented are the same routes."""
    proxied = {rule.rule for rule in app.url_map.iter_rules() if "POST" in rule.methods}
    assert proxied - ANTHROPIC_ROUTES == {case.route for case in CASES.values()}
    documented = re.findall(r"^\| `POST (/v1/\S+)` \|", CONTRACT.read_text(), re.MULTILINE)
    assert sorted(documented) == sorted(proxied)
