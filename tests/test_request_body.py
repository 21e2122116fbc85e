"""Steps 2 and 3 of the request path: the body (size, JSON) and its validation."""

from __future__ import annotations

import pytest

from .conftest import assert_envelope, auth, expect_upstream

ROUTE = "/v1/images/generations"


def test_body_over_the_limit_is_413(make_app, config, ledger_rows):
    config["gateway"]["request_body_limit_bytes"] = 100
    app = make_app(config)
    r = app.test_client().post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "x" * 200})
    assert_envelope(r, 413, "invalid_request_error", "request_too_large")
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    [row] = ledger.query()
    assert (row["status"], row["error_code"], row["model"]) == (413, "request_too_large", None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'{"model": "image-prod",',
        b"[1, 2]",
        b'"text"',
        b'{"model": NaN}',
        b"\xff\xfe{}",
        b"[" * 100000,
    ],
)
def test_invalid_json_is_400(client, upstream, ledger_rows, data):
    r = client.post(ROUTE, headers={**auth(), "Content-Type": "application/json"}, data=data)
    assert_envelope(r, 400, "invalid_request_error", "invalid_json")
    [row] = ledger_rows()
    assert (row["status"], row["error_code"]) == (400, "invalid_json")
    assert not upstream.calls


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "p"}, "model", "missing_required_parameter"),
        ({"model": "image-prod"}, "prompt", "missing_required_parameter"),
        ({}, "model", "missing_required_parameter"),
        ({"model": "", "prompt": "p"}, "model", "invalid_value"),
        ({"model": 7, "prompt": "p"}, "model", "invalid_value"),
        ({"model": "image-prod", "prompt": ""}, "prompt", "invalid_value"),
        ({"model": "image-prod", "prompt": ["p"]}, "prompt", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "n": 0}, "n", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "n": 11}, "n", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "n": "2"}, "n", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "n": 2.0}, "n", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "n": True}, "n", "invalid_value"),
        (
            {"model": "image-prod", "prompt": "p", "response_format": "png"},
            "response_format",
            "invalid_value",
        ),
        ({"model": "image-prod", "prompt": "p", "size": 1024}, "size", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "stream": True}, "stream", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "stream": "yes"}, "stream", "invalid_value"),
    ],
)
def test_validation_failures(client, upstream, ledger_rows, body, param, code):
    r = client.post(ROUTE, headers=auth(), json=body)
    error = assert_envelope(r, 400, "invalid_request_error", code, param)
    assert param in error["message"]
    [row] = ledger_rows()
    assert (row["status"], row["error_code"]) == (400, code)
    assert not upstream.calls


@pytest.mark.parametrize(
    "extra",
    [{"n": None}, {"n": 10}, {"stream": False}, {"response_format": "b64_json"}, {"quality": None}],
)
def test_valid_optional_fields_pass(client, upstream, extra):
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p", **extra})
    assert (
        client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p", **extra}).status_code
        == 200
    )
