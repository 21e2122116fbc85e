"""The JSON access log: one line per request, names and numbers only."""

from __future__ import annotations

import json
import logging

import pytest
import responses

from .conftest import IMAGES_URL, auth


@pytest.fixture
def access_lines():
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Keep()
    logging.getLogger("aisix_flask.access").addHandler(handler)
    yield lines
    logging.getLogger("aisix_flask.access").removeHandler(handler)


def test_one_json_line_per_request(client, upstream, access_lines):
    usage = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"b64_json": "aGVsbG8="}], "usage": usage})
    r = client.post(
        "/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "a secret plan"}
    )
    client.get("/livez")
    client.get("/nope")
    entries = [json.loads(line) for line in access_lines]
    assert [(e["path"], e["status"]) for e in entries] == [
        ("/v1/images/generations", 200),
        ("/livez", 200),
        ("/nope", 404),
    ]
    first = entries[0]
    assert first["request_id"] == r.headers["x-aisix-request-id"]
    assert (first["api_key"], first["model"], first["upstream_model"]) == ("dev", "image-prod", "gpt-image-1")
    assert (first["input_tokens"], first["output_tokens"], first["total_tokens"], first["images"]) == (
        3,
        4,
        7,
        1,
    )
    assert first["latency_ms"] >= first["upstream_latency_ms"] >= 0
    for both in ("latency_ms", "upstream_latency_ms"):  # to the hundredth of a millisecond
        assert first[both] == round(first[both], 2)
    assert first["idempotent_replay"] is False
    assert "api_key" not in entries[1]
    text = "\n".join(access_lines)
    assert "secret plan" not in text and "aGVsbG8=" not in text and "SECRET" not in text


def test_failures_are_logged_with_their_code(client, access_lines):
    client.post(
        "/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "forbidden phrase"}
    )
    client.post("/v1/images/generations", headers=auth("wrong"), json={})
    entries = [json.loads(line) for line in access_lines]
    assert (entries[0]["status"], entries[0]["error_code"]) == (422, "content_policy_violation")
    assert entries[1]["status"] == 401 and "api_key" not in entries[1]  # the caller is unknown


def test_the_access_log_can_be_turned_off(make_app, config, access_lines):
    config["gateway"]["access_log"] = False
    make_app(config).test_client().get("/livez")
    assert access_lines == []


def test_a_calls_line_is_stamped_when_the_request_arrived(client, upstream, access_lines):
    """A call's line is written when it ends; its time is when the request came in."""
    import time
    from datetime import datetime

    def slow(request):
        time.sleep(0.5)
        return 200, {}, json.dumps({"created": 1, "data": [{"url": "u"}]})

    upstream.add_callback(responses.POST, IMAGES_URL, callback=slow)
    before = time.time()
    client.post("/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "p"})
    [line] = [json.loads(text) for text in access_lines]
    stamped = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
    assert before - 0.01 <= stamped < before + 0.25 and line["latency_ms"] >= 500
