"""The usage report: `flask aisix usage` and GET /admin/v1/usage/summary."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from aisix_flask.usage.row import UsageRow

from .conftest import ADMIN_KEY, auth

NOW = datetime.now(UTC).replace(tzinfo=None)
YESTERDAY = NOW - timedelta(days=1)


@pytest.fixture
def seeded(app):
    """Five rows over two days, two keys, two models; some priced, one failed."""
    ledger = app.extensions["aisix"].ledger
    for key, model, status, images, tokens, cost, when in [
        ("alice", "dalle", 200, 2, 0, 0.08, YESTERDAY),
        ("alice", "image-prod", 200, 1, 284, 0.0112, NOW),
        ("bob", "dalle", 200, 1, 0, 0.04, NOW),
        ("bob", "dalle", 502, 0, 0, None, NOW),
        ("bob", "image-prod", 200, 1, 300, None, NOW - timedelta(days=30)),  # outside 7d
    ]:
        fields = {"model": model, "status": status, "images": images, "cost_usd": cost}
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
    assert (
        client.get("/admin/v1/usage/summary?by=color", headers=auth(ADMIN_KEY)).get_json()["error"]["param"]
        == "by"
    )
    assert client.get("/admin/v1/usage/summary").status_code == 401
