"""USD budgets per key and per model: refused up front when the price is known, after the spend
when it is not, shared and live; their spend always agrees with the ledger."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from aisix_flask.policy.budgets import Budgets, period

from .budgeting import PER_IMAGE, chat, image, images_answer, ledger_cost, spent
from .conftest import (
    ADMIN_KEY,
    CHAT_URL,
    IMAGES_URL,
    RERANK_URL,
    assert_envelope,
    auth,
    hold_slot,
    named,
    write_config,
)
from .watching import looked_at


def test_a_per_image_request_that_would_pass_the_budget_is_refused_up_front(budgeted, upstream):
    app, client = budgeted(key={"usd": 0.1, "period": "day"})
    images_answer(upstream, 2)
    assert image(client, n=2).status_code == 200  # 0.08 of 0.10
    r = image(client, n=1)  # 0.12 would pass it: refused, nothing sent
    error = assert_envelope(r, 429, "insufficient_quota", "insufficient_quota")
    assert error["message"] == (
        f"Budget exhausted: API key 'dev' may spend 0.1 USD per day (UTC). "
        f"The period ends at {period('day', datetime.now(UTC))[1]:%Y-%m-%dT%H:%M:%SZ}."
    )
    assert r.headers["x-should-retry"] == "false"
    assert 0 < int(r.headers["Retry-After"]) <= 86400
    assert len(upstream.calls) == 1
    assert spent(app) == pytest.approx(0.08) == ledger_cost(app)


def test_the_images_returned_are_what_is_spent(budgeted, upstream):
    """n=3 reserves 0.12; the upstream returns one image: 0.04 is what is spent."""
    app, client = budgeted(key={"usd": 1, "period": "week"})
    images_answer(upstream, 1)
    assert image(client, n=3).status_code == 200
    assert spent(app) == pytest.approx(0.04) == ledger_cost(app)


def test_a_token_priced_request_passes_while_the_budget_lasts(budgeted, upstream):
    """The price is known only afterwards: the request that spends the last of it goes through,
    and the next is refused (the overshoot is what was in flight)."""
    app, client = budgeted(chat={"usd": 0.05, "period": "month"})
    usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}  # 0.04 USD
    upstream.post(CHAT_URL, json={"choices": [{"message": {"content": "x"}}], "usage": usage})
    assert chat(client).status_code == 200
    assert chat(client).status_code == 200  # 0.04 < 0.05 when admitted: now 0.08
    r = chat(client)
    error = assert_envelope(r, 429, "insufficient_quota", "insufficient_quota")
    assert "model 'chat-prod' may spend 0.05 USD per month (UTC)" in error["message"]
    assert spent(app, "model", "chat-prod") == pytest.approx(0.08) == ledger_cost(app)


def test_a_total_budget_has_no_retry_after(budgeted, upstream):
    app, client = budgeted(dalle={"usd": 0.04, "period": "total"})
    images_answer(upstream, 1)
    assert image(client).status_code == 200
    r = image(client)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert "in total" in r.get_json()["error"]["message"]


def test_failures_and_refusals_spend_nothing(budgeted, upstream):
    app, client = budgeted(key={"usd": 0.2, "period": "day"})
    upstream.post(IMAGES_URL, status=500, json={"error": {"message": "down"}})
    assert image(client, n=2).status_code == 502
    assert image(client, n=2, model="nope").status_code == 404
    assert spent(app) == 0 == ledger_cost(app)


def test_a_budget_raised_in_the_config_lets_requests_through_at_once(budgeted, upstream, tmp_path):
    app, client = budgeted(key={"usd": 0.04, "period": "day"})
    images_answer(upstream, 1)
    assert image(client).status_code == 200
    assert image(client).status_code == 429
    config = budgeted.config
    named(config, "api_keys", "dev")["budget"] = {"usd": 1.0, "period": "day"}
    looked_at(write_config(tmp_path / "config-0.yaml", config))
    images_answer(upstream, 1)
    assert image(client).status_code == 200
    assert spent(app) == pytest.approx(0.08)


def test_the_admin_api_lists_every_budget(budgeted, upstream):
    app, client = budgeted(key={"usd": 5, "period": "week"}, chat={"usd": 2, "period": "total"})
    r = client.get("/admin/v1/budgets", headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    rows = {(b["scope"], b["name"]): b for b in r.get_json()["data"]}
    assert rows[("key", "dev")]["usd"] == 5 and rows[("key", "dev")]["remaining"] == 5
    assert rows[("key", "dev")]["period_end"].endswith("T00:00:00Z")
    assert rows[("model", "chat-prod")]["period_end"] is None
    assert client.get("/admin/v1/budgets", headers=auth()).status_code == 401


def test_a_budget_store_that_cannot_be_reached_refuses_budgeted_requests(make_app, config, upstream):
    """Fail closed: a budget is a promise about money. Requests without a budget go on."""
    config["gateway"]["ratelimit"]["storage_url"] = "redis://127.0.0.1:1/0"
    named(config, "api_keys", "dev")["budget"] = {"usd": 1, "period": "day"}
    named(config, "models", "dalle")["pricing"] = PER_IMAGE
    client = make_app(config).test_client()
    r = image(client)
    error = assert_envelope(r, 503, "server_error", "budget_unavailable")
    assert r.headers["x-should-retry"] == "true" and "budget" in error["message"]
    images_answer(upstream, 1)
    assert client.post("/v1/images/generations", headers=auth("limited-SECRET-0d77aa"),
                       json={"model": "dalle", "prompt": "p"}).status_code == 200  # fmt: skip


@pytest.mark.parametrize(
    ("name", "now", "expected"),
    [
        (
            "day",
            datetime(2026, 11, 25, 23, 59, tzinfo=UTC),
            ("d2026-11-25", datetime(2026, 11, 26, tzinfo=UTC)),
        ),
        (
            "week",
            datetime(2026, 11, 29, 12, tzinfo=UTC),
            ("w2026-W48", datetime(2026, 11, 30, tzinfo=UTC)),
        ),  # Sunday
        (
            "week",
            datetime(2026, 11, 30, 0, tzinfo=UTC),
            ("w2026-W49", datetime(2026, 12, 7, tzinfo=UTC)),
        ),  # Monday
        ("month", datetime(2026, 12, 31, 23, tzinfo=UTC), ("m2026-12", datetime(2027, 1, 1, tzinfo=UTC))),
        ("month", datetime(2027, 2, 1, tzinfo=UTC), ("m2027-02", datetime(2027, 3, 1, tzinfo=UTC))),
        ("total", datetime(2026, 1, 1, tzinfo=UTC), ("total", None)),
    ],
)
def test_periods_are_utc_calendar_periods(name, now, expected):
    assert period(name, now) == expected


def test_nothing_secret_in_a_refusal(budgeted, upstream):
    app, client = budgeted(key={"usd": 0.01, "period": "day"})
    r = image(client, quality="hd")
    assert r.status_code == 429 and "0.08" not in r.get_data(as_text=True)  # no price, no spend


def test_the_usage_page_and_the_cli_show_budgets(budgeted, upstream):
    app, client = budgeted(key={"usd": 0.5, "period": "day"}, dalle={"usd": 3, "period": "total"})
    images_answer(upstream, 1)
    assert image(client).status_code == 200
    html = client.get("/admin/", headers=auth(ADMIN_KEY)).get_data(as_text=True)
    assert (
        '<table id="budgets">' in html
        and "<td>dev</td>" in html
        and "0.4600" in html
        and "never (total)" in html
    )
    out = app.test_cli_runner().invoke(args=["aisix", "budgets"]).output
    assert out.splitlines()[0].split() == [
        "scope",
        "name",
        "period",
        "usd",
        "spent",
        "remaining",
        "period_end",
    ]
    day_end = f"{period('day', datetime.now(UTC))[1]:%Y-%m-%dT%H:%M:%SZ}"
    assert out.splitlines()[1].split() == ["key", "dev", "day", "0.5", "0.0400", "0.4600", day_end]
    assert out.splitlines()[2].split()[-1] == "never"
    data = app.test_cli_runner().invoke(args=["aisix", "budgets", "--format", "json"]).output
    assert '"remaining": 0.46' in data


def test_a_small_spend_is_never_shown_as_zero(budgeted, upstream):
    """Nine cheap tokens spend 0.000042 USD: the page and the CLI say so, not 0.0000."""
    named(budgeted.config, "models", "chat-prod")["pricing"] = {
        "per_million_tokens": {"input": 2.0, "output": 8.0}
    }
    app, client = budgeted(key={"usd": 1, "period": "day"})
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}  # 10 + 32 micro-dollars
    upstream.post(CHAT_URL, json={"choices": [{"message": {"content": "x"}}], "usage": usage})
    assert chat(client).status_code == 200
    html = client.get("/admin/", headers=auth(ADMIN_KEY)).get_data(as_text=True)
    assert '<td>dev</td><td>day</td><td class="n">1.00</td>\n      <td class="n">0.000042</td>' in html
    out = app.test_cli_runner().invoke(args=["aisix", "budgets"]).output
    assert out.splitlines()[1].split()[:5] == ["key", "dev", "day", "1.0", "0.000042"]


@pytest.mark.parametrize(
    ("extra", "param"), [({"size": "1792x1024"}, "size"), ({"quality": "hd", "size": "1024x1024"}, "quality")]
)
def test_a_request_the_config_cannot_price_is_refused_under_a_budget(budgeted, upstream, extra, param):
    """It would be free, and the budget would not hold: 400, nothing sent."""
    named(budgeted.config, "models", "dalle")["pricing"] = {"per_image": {"1024x1024": {"standard": 0.04}}}
    app, client = budgeted(key={"usd": 1, "period": "day"})
    body = {"model": "dalle", "prompt": "p", **extra}
    r = client.post("/v1/images/generations", headers=auth(), json=body)
    error = assert_envelope(r, 400, "invalid_request_error", "price_unknown", param)
    assert "API key 'dev' has a budget" in error["message"] and not upstream.calls


def test_a_model_without_pricing_is_refused_under_a_budget(budgeted, upstream):
    app, client = budgeted(key={"usd": 1, "period": "day"})
    r = client.post("/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "p"})
    assert_envelope(r, 400, "invalid_request_error", "price_unknown", "model")
    assert not upstream.calls


def test_spend_is_counted_before_a_budget_is_set(budgeted, upstream, tmp_path):
    """Every priced request is counted for its key and model in every period: a budget added (or
    given another period) later starts from what was really spent, as the ledger has it."""
    app, client = budgeted()
    images_answer(upstream, 2)
    assert image(client, n=2).status_code == 200  # 0.08, no budget yet
    config = budgeted.config
    named(config, "api_keys", "dev")["budget"] = {"usd": 0.1, "period": "month"}
    looked_at(write_config(tmp_path / "config-0.yaml", config))
    assert spent(app) == pytest.approx(0.08) == ledger_cost(app)
    assert image(client).status_code == 429  # 0.12 would pass 0.10


def test_a_per_image_request_whose_outcome_is_unknown_costs_its_price(budgeted, upstream):
    """Sent and not answered (a timeout): the upstream may have made and billed the image, so it
    is counted, in the ledger and the budget alike."""
    import requests

    app, client = budgeted(key={"usd": 1, "period": "day"})
    upstream.post(IMAGES_URL, body=requests.exceptions.ReadTimeout("slow"))
    assert image(client).status_code == 504
    assert ledger_cost(app) == pytest.approx(0.04) == spent(app)


def test_a_request_the_rate_limit_refuses_holds_no_budget(budgeted, upstream):
    """The limits are checked first: a refused request never holds part of the budget."""
    named(budgeted.config, "api_keys", "dev")["rate_limit"] = {"concurrency": 1}
    app, client = budgeted(key={"usd": 0.05, "period": "day"})
    hold_slot(app, 5)  # another call holds the slot
    assert image(client).status_code == 429
    assert spent(app) == 0


def test_a_budget_step_that_fails_still_gives_the_slot_back(budgeted, upstream, monkeypatch):
    """Whatever the budget step raises (a bug, a worker told to stop), the concurrency slot the
    limits gave the request is its call's to give back: the next request is not locked out."""
    named(budgeted.config, "api_keys", "dev")["rate_limit"] = {"concurrency": 1}
    app, client = budgeted(key={"usd": 5, "period": "day"})
    budgets = app.extensions["aisix"].budgets

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the budget step")

    monkeypatch.setattr(budgets, "reserve", broken)
    assert image(client).status_code == 500
    monkeypatch.undo()
    images_answer(upstream, 1)
    assert image(client).status_code == 200  # not 429: the first request's slot was given back


def test_a_spent_budget_answers_with_the_rate_limit_headers_of_its_admission(budgeted, upstream):
    named(budgeted.config, "api_keys", "dev")["rate_limit"] = {"rpm": 10}
    app, client = budgeted(key={"usd": 0.01, "period": "day"})
    r = image(client)  # one image costs 0.04: more than the budget
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "insufficient_quota"
    assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]) == (
        "10",
        "9",
    )


def test_an_unknown_outcome_costs_its_price_without_a_budget_too(budgeted, upstream):
    """The ledger's cost does not depend on whether a budget is set: a timeout after the request
    was sent costs the price known up front either way."""
    import requests

    app, client = budgeted()
    upstream.post(IMAGES_URL, body=requests.exceptions.ReadTimeout("slow"))
    assert image(client, n=2).status_code == 504
    assert ledger_cost(app) == pytest.approx(0.08)
    time.sleep(Budgets.defer_s * 4)  # counted apart from any budget: written within defer_s
    config = budgeted.config
    named(config, "api_keys", "dev")["budget"] = {"usd": 1, "period": "day"}
    assert spent(budgeted()[0]) == pytest.approx(0.08)


def test_a_2xx_answer_that_cannot_be_read_costs_its_price(budgeted, upstream):
    """The upstream answered 2xx (it made the image) with a body that is not JSON: the caller gets
    502, and the image is counted at its price, as a timeout is."""
    app, client = budgeted(key={"usd": 1, "period": "day"})
    upstream.post(IMAGES_URL, body="<html>done</html>", status=200, content_type="text/html")
    assert_envelope(image(client), 502, "upstream_error", "upstream_bad_response")
    assert ledger_cost(app) == pytest.approx(0.04) == spent(app)


@pytest.mark.parametrize(
    ("prices", "refused"),
    [({"input": 1000.0}, True), ({"output": 2000.0}, True), ({"input": 1.0, "output": 2.0}, False)],
)
def test_token_prices_must_cover_what_the_route_reports_under_a_budget(budgeted, upstream, prices, refused):
    """A chat answer reports input and output tokens: with a price for only one of them its cost is
    unknown, and under a budget it would be free. Refused up front, nothing sent."""
    named(budgeted.config, "models", "chat-prod")["pricing"] = {"per_million_tokens": prices}
    if not refused:
        upstream.post(CHAT_URL, json={"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    app, client = budgeted(chat={"usd": 1, "period": "day"})
    r = chat(client)
    if refused:
        error = assert_envelope(r, 400, "invalid_request_error", "price_unknown", "model")
        assert "input/output" in error["message"] and "model 'chat-prod' has a budget" in error["message"]
        assert not upstream.calls
    else:
        assert r.status_code == 200 and spent(app, "model", "chat-prod") == pytest.approx(13e-6)


def test_a_search_unit_price_prices_rerank_only_under_a_budget(budgeted, upstream):
    """A chat model priced per search unit would count nothing (chat reports tokens): refused."""
    named(budgeted.config, "models", "chat-prod")["pricing"] = {"per_search_unit": 0.002}
    app, client = budgeted(chat={"usd": 1, "period": "day"})
    error = assert_envelope(chat(client), 400, "invalid_request_error", "price_unknown", "model")
    assert "search unit" in error["message"] and not upstream.calls


def test_rerank_priced_per_search_unit_passes_under_a_budget(budgeted, upstream):
    rerank = {"results": [], "meta": {"billed_units": {"search_units": 2}}}
    upstream.post(RERANK_URL, json=rerank)
    reranker = next(m for m in budgeted.config["models"] if m["display_name"] == "reranker")
    reranker["pricing"] = {"per_search_unit": 0.002}
    app, client = budgeted(key={"usd": 1, "period": "day"})
    body = {"model": "reranker", "query": "q", "documents": ["a"]}
    assert client.post("/v1/rerank", headers=auth(), json=body).status_code == 200
    assert spent(app) == pytest.approx(0.004) == ledger_cost(app)
