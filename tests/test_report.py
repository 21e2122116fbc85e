"""The usage report: `flask aisix usage` and GET /admin/v1/usage/summary."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from aisix_flask.usage.display import format_usd
from aisix_flask.usage.row import UsageRow

from .conftest import ADMIN_KEY, auth

NOW = datetime.now(UTC).replace(tzinfo=None)
YESTERDAY = NOW - timedelta(days=1)


@pytest.fixture
def seeded(app):
    """Five rows over two days, two keys, two models, three targets; some priced, one failed
    without a target."""
    ledger = app.extensions["aisix"].ledger
    for key, model, target, status, images, tokens, cost, when in [
        ("alice", "dalle", "dalle-east", 200, 2, 0, 0.08, YESTERDAY),
        ("alice", "image-prod", "image-prod", 200, 1, 284, 0.0112, NOW),
        ("bob", "dalle", "dalle-west", 200, 1, 0, 0.04, NOW),
        ("bob", "dalle", None, 502, 0, 0, None, NOW),
        ("bob", "image-prod", "image-prod", 200, 1, 300, None, NOW - timedelta(days=30)),  # outside 7d
    ]:
        fields = {"model": model, "target": target, "status": status, "images": images, "cost_usd": cost}
        tokens_ = {"total_tokens": tokens, "output_tokens": tokens}
        ledger.record(
            UsageRow("r", key, "/v1/images/generations", None, created_at=when, **fields, **tokens_)
        )
    ledger.flush(10)
    return app


def run(app, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["aisix", "usage", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_table_by_model(seeded):
    out = run(seeded, "--since", "7d", "--by", "model")
    assert out.splitlines() == [
        "model       requests  errors  images  input_tokens  output_tokens  total_tokens  cost_usd",
        "dalle              3       1       3             0              0             0    0.1200",
        "image-prod         1       0       1             0            284           284    0.0112",
        "total              4       1       4             0            284           284    0.1312",
    ]


def test_csv_by_api_key(seeded):
    rows = list(csv.DictReader(io.StringIO(run(seeded, "--by", "api_key", "--format", "csv"))))
    assert [(r["api_key"], r["requests"], r["errors"], r["cost_usd"]) for r in rows] == [
        ("alice", "2", "0", "0.0912"),
        ("bob", "2", "1", "0.04"),
    ]


def test_table_by_target(seeded):
    """A row that reached no upstream (no target) has its own line."""
    out = run(seeded, "--since", "7d", "--by", "target")
    assert out.splitlines() == [
        "target      requests  errors  images  input_tokens  output_tokens  total_tokens  cost_usd",
        "(none)             1       1       0             0              0             0         -",
        "dalle-east         1       0       2             0              0             0    0.0800",
        "dalle-west         1       0       1             0              0             0    0.0400",
        "image-prod         1       0       1             0            284           284    0.0112",
        "total              4       1       4             0            284           284    0.1312",
    ]


def test_json_by_day_and_since(seeded):
    rows = json.loads(run(seeded, "--by", "day", "--format", "json", "--since", "60d"))
    assert [(r["day"], r["requests"]) for r in rows] == [
        ((NOW - timedelta(days=30)).date().isoformat(), 1),
        (YESTERDAY.date().isoformat(), 1),
        (NOW.date().isoformat(), 3),
    ]
    assert rows[0]["cost_usd"] is None and rows[0]["priced_requests"] == 0


def test_bad_since(seeded):
    result = seeded.test_cli_runner().invoke(args=["aisix", "usage", "--since", "last week"])
    assert result.exit_code == 2 and "--since" in result.output


def test_summary_api_matches_the_report(seeded):
    client = seeded.test_client()
    r = client.get("/admin/v1/usage/summary?by=api_key&since=7d", headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    body = r.get_json()
    assert (body["object"], body["by"]) == ("list", "api_key")
    assert body["data"] == json.loads(run(seeded, "--by", "api_key", "--format", "json"))
    error = client.get("/admin/v1/usage/summary?by=color", headers=auth(ADMIN_KEY)).get_json()["error"]
    assert (error["param"], error["message"]) == (
        "by",
        "'by' must be one of api_key, model, target, route, day.",
    )
    assert client.get("/admin/v1/usage/summary").status_code == 401


def test_summary_api_by_target(seeded):
    client = seeded.test_client()
    r = client.get("/admin/v1/usage/summary?by=target&since=60d", headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    body = r.get_json()
    assert body["by"] == "target"
    assert [(row["target"], row["requests"], row["errors"], row["cost_usd"]) for row in body["data"]] == [
        (None, 1, 1, None),
        ("dalle-east", 1, 0, 0.08),
        ("dalle-west", 1, 0, 0.04),
        ("image-prod", 2, 0, 0.0112),
    ]
    assert body["data"] == json.loads(run(seeded, "--by", "target", "--since", "60d", "--format", "json"))


@pytest.mark.parametrize(
    ("value", "places", "shown"),
    [
        (0.0, 4, "0.0000"),
        (0.12, 4, "0.1200"),
        (0.1312, 4, "0.1312"),
        (0.0012, 4, "0.0012"),
        (0.00015, 4, "0.00015"),
        (0.000042, 4, "0.000042"),
        (0.00001, 4, "0.00001"),
        (3e-10, 4, "0.0000000003"),
        (0.000099999, 4, "0.0001"),
        (12.345678, 4, "12.3457"),
        (0.004, 2, "0.004"),
        (0.5, 2, "0.50"),
    ],
)
def test_a_cost_shows_two_significant_digits_at_least(value, places, shown):
    assert format_usd(value, places) == shown


def test_a_small_cost_is_never_shown_as_zero(app):
    """A few embedding tokens cost 0.000042 USD: the table says so, not 0.0000, and the summary's
    JSON keeps a sum below half a micro-dollar (it was rounded to 6 decimals: 0.0)."""
    ledger = app.extensions["aisix"].ledger
    for model, cost in [("embed", 0.000042), ("tiny", 3e-07), ("tiny", 1e-07)]:
        ledger.record(
            UsageRow(
                "r", "alice", "/v1/embeddings", None, created_at=NOW, model=model, status=200, cost_usd=cost
            )
        )
    ledger.flush(10)
    lines = run(app, "--by", "model").splitlines()
    assert [line.split()[0::7] for line in lines[1:]] == [
        ["embed", "0.000042"],
        ["tiny", "0.0000004"],
        ["total", "0.000042"],
    ]
    r = app.test_client().get("/admin/v1/usage/summary?by=model", headers=auth(ADMIN_KEY))
    costs = {row["model"]: row["cost_usd"] for row in r.get_json()["data"]}
    assert costs == {"embed": pytest.approx(0.000042), "tiny": pytest.approx(4e-07)}
    assert json.loads(run(app, "--by", "model", "--format", "json"))[1]["cost_usd"] > 0
