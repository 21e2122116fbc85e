"""Admin usage API and health probes."""

from __future__ import annotations

import pytest

from aisix_flask.usage.row import UsageRow

from .conftest import ADMIN_KEY, CALLER_KEY, auth

ROUTE = "/v1/images/generations"


def make_rows(client):
    """Three failed requests (no upstream needed): two for 'nope', one for 'dalle' by 'limited'."""
    client.post(ROUTE, headers=auth(), json={"model": "nope", "prompt": "p"})
    client.post(ROUTE, headers=auth(), json={"model": "nope", "prompt": "p"})
    client.post(ROUTE, headers=auth("limited-SECRET-0d77aa"), json={"model": "image-prod", "prompt": "p"})
    client.application.extensions["aisix"].ledger.flush(10)


def test_usage_lists_rows_newest_first(client):
    make_rows(client)
    r = client.get("/admin/v1/usage", headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    body = r.get_json()
    assert body["object"] == "list"
    assert [row["status"] for row in body["data"]] == [403, 404, 404]
    assert set(body["data"][0]) == {
        "request_id", "created_at", "api_key", "route", "model", "upstream_model", "provider",
        "status", "error_code", "input_tokens", "output_tokens", "total_tokens", "images",
        "size", "quality", "n", "latency_ms", "upstream_latency_ms", "client_ip",
        "pii_masked", "guardrails_flagged", "input_text_tokens", "input_image_tokens", "cost_usd",
        "idempotent_replay", "input_cached_tokens", "search_units", "target", "attempts",
        "input_cache_write_tokens",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("limit=1", 1),
        ("api_key=limited", 1),
        ("api_key=dev", 2),
        ("model=nope", 2),
        ("model=nope&api_key=limited", 0),
        ("since=2000-01-01T00:00:00Z", 3),
        ("since=2000-01-01T00:00:00+00:00", 3),
        ("since=2999-01-01", 0),
    ],
)
def test_usage_filters(client, query, count):
    make_rows(client)
    r = client.get(f"/admin/v1/usage?{query}", headers={"x-api-key": ADMIN_KEY})
    assert len(r.get_json()["data"]) == count


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("target=chat-a", ["direct", "routed-2"]),  # newest first
        ("target=chat-b", ["routed-1"]),
        ("target=chat", []),  # exact, not a prefix
        ("target=chat-a&model=chat", ["routed-2"]),
        ("target=chat-a&api_key=bob", ["direct"]),
        ("target=", []),  # an empty target is not a missing one
        ("model=chat", ["refused", "routed-2", "routed-1"]),  # no target filter: the NULL one too
    ],
)
def test_usage_filters_by_target(client, query, ids):
    """``target`` is the model row that answered; a request refused before any upstream has none."""
    ledger = client.application.extensions["aisix"].ledger
    for request_id, key, model, target in [
        ("routed-1", "alice", "chat", "chat-b"),
        ("routed-2", "alice", "chat", "chat-a"),
        ("direct", "bob", "chat-a", "chat-a"),
        ("refused", "alice", "chat", None),
    ]:
        ledger.record(UsageRow(request_id, key, "/v1/chat/completions", None, model=model, target=target))
    ledger.flush(10)
    r = client.get(f"/admin/v1/usage?{query}", headers=auth(ADMIN_KEY))
    assert [row["request_id"] for row in r.get_json()["data"]] == ids


@pytest.mark.parametrize(
    ("query", "param"), [("limit=0", "limit"), ("limit=x", "limit"), ("since=yesterday", "since")]
)
def test_usage_bad_query_is_400(client, query, param):
    r = client.get(f"/admin/v1/usage?{query}", headers=auth(ADMIN_KEY))
    assert r.status_code == 400
    assert r.get_json()["error"]["param"] == param


@pytest.mark.parametrize("headers", [{}, auth(CALLER_KEY), auth("wrong")])
def test_usage_needs_an_admin_key(client, headers):
    r = client.get("/admin/v1/usage", headers=headers)
    assert r.status_code == 401
    assert r.get_json()["error"]["type"] == "authentication_error"


def test_health(client, monkeypatch):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    ledger = client.application.extensions["aisix"].ledger
    monkeypatch.setattr(ledger, "ping", lambda: False)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["error"]["type"] == "server_error"
    assert client.get("/livez").status_code == 200


def test_readyz_is_503_when_the_database_is_gone(make_app, config, tmp_path):
    config["gateway"]["usage"]["database_url"] = f"sqlite:///{tmp_path}/db/usage.db"
    app = make_app(config)
    (tmp_path / "db" / "usage.db").unlink()
    (tmp_path / "db").rename(tmp_path / "gone")
    (tmp_path / "db").write_text("not a directory")  # the file can no longer be opened
    app.extensions["aisix"].ledger.engine.dispose()
    assert app.test_client().get("/readyz").status_code == 503
