"""Streamed image generations in-process against the real loopback fake upstream: partial images
relayed, cuts and silences ended with an error event, the completed event priced."""

from __future__ import annotations

import pytest

from .conftest import auth, base_config, named
from .streams import events, ledger_row, payloads


def images(client, prompt: str, **extra):
    body = {"model": "image-prod", "prompt": prompt, "stream": True, **extra}
    return client.post("/v1/images/generations", headers=auth(), json=body, buffered=False)


def test_an_image_stream_relays_partials_then_the_completed_image(streaming):
    app, client = streaming
    sent = events(images(client, "a fox", partial_images=2))
    kinds = [e.split(b"\n")[0] for e in sent]
    assert kinds == [b"event: image_generation.partial_image"] * 2 + [b"event: image_generation.completed"]
    row = ledger_row(app)
    assert (row["status"], row["images"], row["total_tokens"], row["input_text_tokens"]) == (200, 1, 284, 12)


def test_a_cut_image_stream_ends_with_an_error_event(streaming):
    app, client = streaming
    got = payloads(images(client, "[cut:1] a fox", partial_images=3))
    assert got[0]["type"] == "image_generation.partial_image"
    assert got[-1]["error"]["code"] == "upstream_stream_interrupted"
    row = ledger_row(app)
    assert (row["status"], row["images"], row["error_code"]) == (502, 0, "upstream_stream_interrupted")


def test_a_silent_image_stream_gets_keep_alives(streaming, make_app, tmp_path, fake):
    app, client = streaming
    sent = events(images(client, "[silent:1] a fox", partial_images=2, model="quick-image"))
    assert sent.count(b": keep-alive\n\n") >= 2 and b"upstream_timeout" in sent[-1]


def test_an_image_stream_is_priced_from_its_completed_event(make_app, tmp_path, fake):
    config = base_config(tmp_path, fake.url)
    named(config, "models", "image-prod")["pricing"] = {
        "per_million_tokens": {"input_text": 5, "input_image": 10, "output_image": 40}
    }
    app = make_app(config)
    events(images(app.test_client(), "a fox", partial_images=1))
    assert ledger_row(app)["cost_usd"] == pytest.approx((12 * 5 + 272 * 40) / 1e6)


def test_a_cut_image_stream_costs_the_images_asked_for_at_a_per_image_price(make_app, tmp_path, fake):
    """Cut before its completed event: the upstream may have made (and billed) the images, so with a
    per-image price the row costs what was asked for; with a token price nothing is guessed."""
    config = base_config(tmp_path, fake.url)
    pricing = named(config, "models", "image-prod")["pricing"] = {"per_image": {"1024x1024": {"low": 0.01}}}
    pricing["defaults"] = {"size": "1024x1024", "quality": "low"}
    app = make_app(config)
    events(images(app.test_client(), "[cut:1] a fox", partial_images=2, n=2))
    row = ledger_row(app)
    assert (row["status"], row["images"], row["cost_usd"]) == (502, 0, pytest.approx(0.02))
