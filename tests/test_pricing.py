"""Cost per request: dall-e per image by size and quality, gpt-image per token; null without a price."""

from __future__ import annotations

import pytest

from aisix_flask.api.rerank import note_usage as note_rerank_usage
from aisix_flask.usage.pricing import Pricing
from aisix_flask.usage.row import UsageRow

from .conftest import IMAGES_URL, auth, named

DALL_E_3 = Pricing(
    per_image={
        "1024x1024": {"standard": 0.040, "hd": 0.080},
        "1024x1792": {"standard": 0.080, "hd": 0.120},
        "1792x1024": {"standard": 0.080, "hd": 0.120},
    },
    default_size="1024x1024",
    default_quality="standard",
)
DALL_E_2 = Pricing(
    per_image={
        "256x256": {"standard": 0.016},
        "512x512": {"standard": 0.018},
        "1024x1024": {"standard": 0.020},
    },
    default_size="1024x1024",
    default_quality="standard",
)
GPT_IMAGE_1 = Pricing(per_million_tokens={"input_text": 5.0, "input_image": 10.0, "output_image": 40.0})


def answered(images=1, size=None, quality=None, status=200, **usage) -> UsageRow:
    row = UsageRow("r", "k", "/v1/images/generations", None, status=status, size=size, quality=quality)
    row.note_image_answer({"data": [{}] * images, **({"usage": usage} if usage else {})})
    return row


@pytest.mark.parametrize(
    ("pricing", "images", "size", "quality", "cost"),
    [
        (DALL_E_3, 1, "1024x1024", "standard", 0.04),
        (DALL_E_3, 1, "1024x1024", "hd", 0.08),
        (DALL_E_3, 1, "1024x1792", "standard", 0.08),
        (DALL_E_3, 1, "1792x1024", "hd", 0.12),
        (DALL_E_3, 1, None, None, 0.04),  # the configured defaults, not a guess
        (DALL_E_3, 1, "1024x1024", None, 0.04),
        (DALL_E_3, 1, "512x512", "standard", None),  # no such price
        (DALL_E_3, 1, "1024x1024", "ultra", None),
        (DALL_E_2, 1, "256x256", None, 0.016),
        (DALL_E_2, 3, "512x512", None, 0.054),  # per image returned
        (DALL_E_2, 10, "1024x1024", "standard", 0.2),
        (DALL_E_2, 0, "1024x1024", "standard", 0.0),
        (Pricing(per_image={"1024x1024": {"standard": 0.04}}), 1, None, None, None),  # no default size
    ],
)
def test_per_image(pricing, images, size, quality, cost):
    result = pricing.cost(answered(images, size, quality))
    assert result == (None if cost is None else pytest.approx(cost))


def test_tokens_cover_every_image():
    usage = {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
             "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}  # fmt: skip
    one, two = answered(1, **usage), answered(2, **usage)
    assert GPT_IMAGE_1.cost(one) == GPT_IMAGE_1.cost(two) == pytest.approx((50 * 5 + 4160 * 40) / 1e6)


def test_token_kinds_are_priced_separately():
    row = answered(1, input_tokens=300, output_tokens=1000, total_tokens=1300,
                   input_tokens_details={"text_tokens": 100, "image_tokens": 200})  # fmt: skip
    assert GPT_IMAGE_1.cost(row) == pytest.approx((100 * 5 + 200 * 10 + 1000 * 40) / 1e6)
    assert (row.input_text_tokens, row.input_image_tokens) == (100, 200)


def test_without_a_breakdown_input_is_not_guessed():
    row = answered(1, input_tokens=300, output_tokens=1000, total_tokens=1300)
    assert GPT_IMAGE_1.cost(row) is None  # text and image input cost differently
    flat = Pricing(per_million_tokens={"input_text": 5.0, "output_image": 40.0})
    assert flat.cost(row) == pytest.approx((300 * 5 + 1000 * 40) / 1e6)


def test_missing_price_for_a_reported_kind_is_null():
    row = answered(1, input_tokens=10, output_tokens=10, total_tokens=20,
                   input_tokens_details={"text_tokens": 10, "image_tokens": 0})  # fmt: skip
    assert Pricing(per_million_tokens={"input_text": 5.0}).cost(row) is None


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_failures_have_no_cost(make_app, config, upstream, status):
    named(config, "models", "dalle")["pricing"] = {
        "per_image": {"1024x1024": {"standard": 0.04}},
        "defaults": {"size": "1024x1024", "quality": "standard"},
    }
    app = make_app(config)
    upstream.post(IMAGES_URL, status=status, json={"error": {"message": "no", "type": "x"}})
    app.test_client().post("/v1/images/generations", headers=auth(), json={"model": "dalle", "prompt": "p"})
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    [row] = ledger.query()
    assert row["status"] != 200 and row["cost_usd"] is None


def test_cost_reaches_the_ledger(make_app, config, upstream):
    named(config, "models", "dalle")["pricing"] = {
        "per_image": {"1024x1024": {"standard": 0.04, "hd": 0.08}},
        "defaults": {"size": "1024x1024", "quality": "standard"},
    }
    named(config, "models", "image-prod")["pricing"] = {
        "per_million_tokens": {"input_text": 5, "input_image": 10, "output_image": 40}
    }
    app = make_app(config)
    client = app.test_client()
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "a"}, {"url": "b"}]})
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"b64_json": "x"}], "usage": {
        "input_tokens": 20, "output_tokens": 272, "total_tokens": 292,
        "input_tokens_details": {"text_tokens": 20, "image_tokens": 0}}})  # fmt: skip
    client.post(
        "/v1/images/generations",
        headers=auth(),
        json={"model": "dalle", "prompt": "p", "n": 2, "quality": "hd"},
    )
    client.post("/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "p"})
    client.post("/v1/images/generations", headers=auth(), json={"model": "nope", "prompt": "p"})
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    costs = [(r["model"], r["cost_usd"]) for r in reversed(ledger.query())]
    assert costs == [
        ("dalle", pytest.approx(0.16)),
        ("image-prod", pytest.approx((20 * 5 + 272 * 40) / 1e6)),
        ("nope", None),
    ]


def test_pricing_config_is_validated(tmp_path, config):
    from aisix_flask.config import ConfigError, load_config

    from .conftest import write_config

    named(config, "models", "image-prod")["pricing"] = {
        "per_image": {"1024x1024": {"hd": -1}},
        "per_million_tokens": {"output": 1},
    }
    with pytest.raises(ConfigError) as info:
        load_config(str(write_config(tmp_path / "c.yaml", config)))
    assert info.value.problems == ["models[0].pricing.per_image.1024x1024.hd: Must be a number ≥ 0."]


GPT_4O = Pricing(per_million_tokens={"input": 2.5, "cached_input": 1.25, "output": 10.0})


def chat_row(**usage) -> UsageRow:
    row = UsageRow("r", "k", "/v1/chat/completions", None, status=200)
    row.note_answer_usage({"usage": usage})
    return row


def test_chat_tokens_with_cached_input():
    row = chat_row(prompt_tokens=1000, completion_tokens=500, total_tokens=1500,
                   prompt_tokens_details={"cached_tokens": 200})  # fmt: skip
    assert row.input_cached_tokens == 200
    assert GPT_4O.cost(row) == pytest.approx((800 * 2.5 + 200 * 1.25 + 500 * 10) / 1e6)
    no_discount = Pricing(per_million_tokens={"input": 2.5, "output": 10.0})
    assert no_discount.cost(row) == pytest.approx((1000 * 2.5 + 500 * 10) / 1e6)  # cached costs as input


def test_claudes_cache_reads_and_writes_are_priced_apart():
    # As the anthropic adapter reports them: 21 input, 100 read from the cache, 30 written to it.
    row = chat_row(prompt_tokens=151, completion_tokens=9, total_tokens=160,
                   prompt_tokens_details={"cached_tokens": 100, "cache_write_tokens": 30})  # fmt: skip
    assert (row.input_cached_tokens, row.input_cache_write_tokens) == (100, 30)
    sonnet = Pricing(per_million_tokens={"input": 3, "cache_read": 0.3, "cache_write": 3.75, "output": 15})
    assert sonnet.cost(row) == pytest.approx((21 * 3 + 100 * 0.3 + 30 * 3.75 + 9 * 15) / 1e6)
    no_cache_prices = Pricing(per_million_tokens={"input": 3, "output": 15})
    assert no_cache_prices.cost(row) == pytest.approx((151 * 3 + 9 * 15) / 1e6)  # cached costs as input
    read_only = Pricing(per_million_tokens={"input": 3, "cached_input": 0.3, "output": 15})
    assert read_only.cost(row) == pytest.approx((51 * 3 + 100 * 0.3 + 9 * 15) / 1e6)


def test_embeddings_are_input_tokens_only():
    row = chat_row(prompt_tokens=300, total_tokens=300)
    assert Pricing(per_million_tokens={"input": 0.02}).cost(row) == pytest.approx(300 * 0.02 / 1e6)
    assert Pricing(per_million_tokens={"output": 1.0}).cost(row) is None  # input has no price


def test_rerank_by_search_unit_or_by_token():
    cohere = UsageRow("r", "k", "/v1/rerank", None, status=200)
    note_rerank_usage(cohere, {"meta": {"billed_units": {"search_units": 3}}})
    assert (cohere.search_units, cohere.total_tokens) == (3, 0)
    assert Pricing(per_search_unit=0.002).cost(cohere) == pytest.approx(0.006)
    jina = UsageRow("r", "k", "/v1/rerank", None, status=200)
    note_rerank_usage(jina, {"usage": {"total_tokens": 400}})
    assert (jina.input_tokens, jina.total_tokens) == (400, 400)
    assert Pricing(per_million_tokens={"input": 0.05}).cost(jina) == pytest.approx(400 * 0.05 / 1e6)


def test_image_and_text_token_prices_do_not_mix(tmp_path, config):
    from aisix_flask.config import ConfigError, load_config

    from .conftest import write_config

    named(config, "models", "image-prod")["pricing"] = {"per_million_tokens": {"input_text": 5, "output": 10}}
    with pytest.raises(ConfigError, match="either image token prices"):
        load_config(str(write_config(tmp_path / "c.yaml", config)))


def test_a_chat_answers_cost_reaches_the_ledger(make_app, config, upstream):
    from .conftest import CHAT_URL

    named(config, "models", "chat-prod")["pricing"] = {"per_million_tokens": {"input": 2.5, "output": 10}}
    app = make_app(config)
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    upstream.post(CHAT_URL, json={"choices": [{"message": {"content": "x"}}], "usage": usage})
    body = {"model": "chat-prod", "messages": [{"role": "user", "content": "hi"}]}
    assert app.test_client().post("/v1/chat/completions", headers=auth(), json=body).status_code == 200
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    assert ledger.query()[0]["cost_usd"] == pytest.approx((100 * 2.5 + 20 * 10) / 1e6)


def test_tokens_and_search_units_are_summed():
    row = UsageRow("r", "k", "/v1/rerank", None, status=200)
    note_rerank_usage(row, {"meta": {"billed_units": {"search_units": 2, "input_tokens": 1000}}})
    both = Pricing(per_million_tokens={"input": 1.0}, per_search_unit=0.002)
    assert both.cost(row) == pytest.approx(1000 / 1e6 + 0.004)
    assert Pricing(per_million_tokens={"input": 1.0}).cost(row) is None  # search units without a price


def test_more_cached_tokens_than_input_never_make_a_negative_cost():
    row = chat_row(
        prompt_tokens=5, completion_tokens=1, total_tokens=6, prompt_tokens_details={"cached_tokens": 50}
    )
    assert GPT_4O.cost(row) == pytest.approx((5 * 1.25 + 1 * 10) / 1e6)
