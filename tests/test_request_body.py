"""Steps 2 and 3 of the request path: the body (size, JSON) and its validation."""

from __future__ import annotations

import json

import pytest

from .conftest import IMAGES_URL, assert_envelope, auth, expect_upstream

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
        ({"model": "image-prod", "prompt": "p", "n": 2.5}, "n", "invalid_value"),
        ({"model": "image-prod", "prompt": "p", "n": True}, "n", "invalid_value"),
        (
            {"model": "image-prod", "prompt": "p", "response_format": "png"},
            "response_format",
            "invalid_value",
        ),
        ({"model": "image-prod", "prompt": "p", "size": 1024}, "size", "invalid_value"),
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


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (rb'{"model": "image-prod", "prompt": "a\ud800b"}', "prompt"),
        (rb'{"model": "\ud800", "prompt": ""}', "model"),
        (rb'{"model": "image-prod", "prompt": "p", "size": "\udfff"}', "size"),
        (rb'{"model": "image-prod", "prompt": "p", "user": "x\uDBFF"}', "user"),
        (rb'{"model": "image-prod", "prompt": "p", "extra": {"deep": ["\udfff"]}}', "extra"),
        (rb'{"model": "image-prod", "prompt": "p", "extra": [{"\ud800": 1}]}', "extra"),
        (rb'{"model": "image-prod", "prompt": "p", "\ud800": 1}', "\\ud800"),
        (rb'{"model": "image-prod", "prompt": "\ude00\ud83d"}', "prompt"),  # a pair, reversed
    ],
)
def test_lone_surrogates_are_400_naming_the_field(client, upstream, ledger_rows, raw, param):
    """JSON allows them; UTF-8 cannot carry them, so nothing could forward or record them."""
    r = client.post(ROUTE, headers={**auth(), "Content-Type": "application/json"}, data=raw)
    error = assert_envelope(r, 400, "invalid_request_error", "invalid_value", param)
    assert "surrogate" in error["message"]
    [row] = ledger_rows()
    assert (row["status"], row["error_code"], row["model"]) == (400, "invalid_value", None)
    assert not upstream.calls


def test_utf8_encoded_surrogates_are_not_json(client, upstream):
    r = client.post(ROUTE, headers=auth(), data=b'{"model": "image-prod", "prompt": "\xed\xa0\x80"}')
    assert_envelope(r, 400, "invalid_request_error", "invalid_json")
    assert not upstream.calls


def test_a_surrogate_pair_is_an_ordinary_character(client, upstream):
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "a \U0001f600 cat"})
    raw = rb'{"model": "image-prod", "prompt": "a \ud83d\ude00 cat"}'
    assert client.post(ROUTE, headers=auth(), data=raw).status_code == 200


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E+309", b"[2, 1e999]"])
def test_numbers_no_double_holds_are_400(client, upstream, number):
    """1e400 would become Infinity, which is not JSON: never forwarded."""
    raw = b'{"model": "image-prod", "prompt": "p", "extra": ' + number + b"}"
    error = assert_envelope(
        client.post(ROUTE, headers=auth(), data=raw), 400, "invalid_request_error", "invalid_value", "extra"
    )
    assert "too large" in error["message"]
    assert not upstream.calls


def test_large_and_precise_numbers_are_forwarded_as_json(client, upstream):
    """Integers of any size keep every digit; a double's digits are what the caller meant."""
    big = "9" * 400
    raw = f'{{"model": "image-prod", "prompt": "p", "big": {big}, "small": 1e-400, "x": 1.5e300}}'
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert client.post(ROUTE, headers=auth(), data=raw.encode()).status_code == 200
    sent = upstream.calls[0].request.body.decode()
    assert json.loads(sent) == {
        "model": "gpt-image-1",
        "prompt": "p",
        "big": int(big),
        "small": 0.0,
        "x": 1.5e300,
    }
    assert "Infinity" not in sent and "NaN" not in sent


@pytest.mark.parametrize("field", ["n", "partial_images", "output_compression"])
def test_whole_numbers_written_with_a_fraction_are_integers(client, upstream, ledger_rows, field):
    """2.0 is an integer to JSON Schema and to OpenAI's spec: accepted, and forwarded as sent."""
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}, {"url": "v"}]})
    raw = f'{{"model": "image-prod", "prompt": "p", "{field}": 2.0}}'.encode()
    assert client.post(ROUTE, headers=auth(), data=raw).status_code == 200
    assert f'"{field}": 2.0'.encode() in upstream.calls[0].request.body
    if field == "n":
        assert ledger_rows()[0]["n"] == 2
