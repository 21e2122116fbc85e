"""The usage ledger on SQLite and on the real PostgreSQL: rows, filters, upgrades, retries."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from aisix_flask.usage.ledger import Ledger
from aisix_flask.usage.row import UsageRow


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/usage.db"
    else:
        url = request.getfixturevalue("pg_schema")
    ledger = Ledger(url, str(tmp_path / "journal.db"))
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM usage"))
    yield ledger
    ledger.close()


def row(i: int, **fields) -> UsageRow:
    return UsageRow(
        f"req-{i}",
        fields.pop("api_key", "dev"),
        "/v1/images/generations",
        fields.pop("client_ip", "127.0.0.1"),
        **fields,
    )


def test_rows_round_trip(ledger):
    ledger.record(
        row(1, model="image-prod", status=200, images=2, input_tokens=5, output_tokens=7, total_tokens=12)
    )
    assert ledger.flush(10)
    [got] = ledger.query()
    assert (got["request_id"], got["model"], got["images"], got["total_tokens"]) == (
        "req-1",
        "image-prod",
        2,
        12,
    )
    assert got["created_at"].endswith("Z")


def test_filters_and_order(ledger):
    old = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=3)
    ledger.record(row(1, api_key="a", model="m1", created_at=old))
    ledger.record(row(2, api_key="b", model="m1"))
    ledger.record(row(3, api_key="a", model="m2"))
    ledger.flush(10)
    assert [r["request_id"] for r in ledger.query()] == ["req-3", "req-2", "req-1"]
    assert [r["request_id"] for r in ledger.query(api_key="a")] == ["req-3", "req-1"]
    assert [r["request_id"] for r in ledger.query(model="m1", limit=1)] == ["req-2"]
    assert len(ledger.query(since=datetime.now(UTC) - timedelta(days=1))) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_table_gets_the_new_columns(tmp_path, request, backend):
    """The table as the first release created it is upgraded in place; its rows stay."""
    from sqlalchemy import Column, MetaData, Table, inspect

    from aisix_flask.usage.table import usage

    url = f"sqlite:///{tmp_path}/old.db" if backend == "sqlite" else request.getfixturevalue("pg_schema")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    added_since = ("pii_masked", "guardrails_flagged", "input_text_tokens", "input_image_tokens", "cost_usd",
                   "idempotent_replay")  # fmt: skip
    old = MetaData()
    Table("usage", old, *[Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                          for c in usage.columns if c.name not in added_since])  # fmt: skip
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS usage"))
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO usage (request_id, created_at, api_key, route, status, input_tokens, output_tokens,"
            " total_tokens, images) VALUES ('old', '2026-01-01 00:00:00', 'k', '/r', 200, 0, 0, 0, 1)"
        ))  # fmt: skip
    Ledger(url, str(tmp_path / "journal.db")).close()
    columns = {c["name"] for c in inspect(engine).get_columns("usage")}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT request_id, pii_masked, cost_usd FROM usage")).fetchall()
    engine.dispose()
    assert set(added_since) <= columns
    assert [tuple(r) for r in rows] == [("old", 0, None)]


def test_a_failed_write_goes_to_the_journal_and_is_replayed_once(ledger, monkeypatch, event_lines):
    real_begin, failures = ledger.engine.begin, []

    def flaky_begin():
        if len(failures) < 2:
            failures.append(1)
            raise __import__("sqlalchemy").exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return real_begin()

    monkeypatch.setattr(ledger.engine, "begin", flaky_begin)
    monkeypatch.setattr(ledger.database, "retry_s", 0.05)
    ledger.record(row(1))
    assert ledger.flush(10)  # in the journal
    deadline = time.monotonic() + 10
    while ledger.journal.count() and time.monotonic() < deadline:
        time.sleep(0.05)
    monkeypatch.undo()
    assert [r["request_id"] for r in ledger.query()] == ["req-1"]
    assert ledger.journal.count() == 0
    [down, up] = [line for line in event_lines if line["store"] == "ledger"]
    assert down["event"] == "store_unavailable" and "go to the journal" in down["doing"]
    assert up["event"] == "store_available"


def test_many_writers_lose_nothing(ledger):
    import threading

    def write(start: int) -> None:
        for i in range(start, start + 100):
            ledger.record(row(i))

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.flush(30)
    assert len(ledger.query(limit=1000)) == 800


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_workers_and_a_sigterm_mid_load(tmp_path, fake, request, backend):
    """Four workers write at once, and a graceful stop in the middle of the load still answers
    and records every request it accepted: rows == answered requests."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from .integration import ENV, LOAD_KEY, gateway_config
    from .serving import Gunicorn, generate

    url = f"sqlite:///{tmp_path}/usage.db" if backend == "sqlite" else request.getfixturevalue("pg_schema")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS usage"))
    server = Gunicorn(gateway_config(tmp_path, fake, usage_url=url), workers=4, threads=8, env=ENV)
    answered: list[int] = []

    def one(i: int) -> None:
        try:
            answered.append(generate(server.url, LOAD_KEY, "dalle", f"[sleep:0.3] {i}").status_code)
        except requests.ConnectionError:
            pass  # sent after the stop began: refused, never accepted

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(one, i) for i in range(500)]
        threading.Event().wait(1.5)
        assert server.stop() == 0
        for f in futures:
            f.result()
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT count(*) FROM usage WHERE api_key = 'load'")).scalar()
    engine.dispose()
    assert len(answered) >= 32 and set(answered) == {200}
    assert recorded == len(answered)


def test_the_gateway_starts_and_serves_while_its_stores_are_down(
    make_app, config, upstream, caplog, event_lines
):
    """Nothing listens on port 1: the ledger database and the Redis limiter are both down."""
    from .conftest import IMAGES_URL, auth, named

    config["gateway"]["usage"]["database_url"] = "postgresql://127.0.0.1:1/test?connect_timeout=2"
    config["gateway"]["ratelimit"]["storage_url"] = "redis://127.0.0.1:1/0"
    named(config, "api_keys", "dev")["rate_limit"] = {"rpm": 5}
    app = make_app(config)
    client = app.test_client()
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    assert (
        client.post(
            "/v1/images/generations", headers=auth(), json={"model": "image-prod", "prompt": "p"}
        ).status_code
        == 200
    )
    ledger = app.extensions["aisix"].ledger
    assert ledger.flush(5)  # the row is in the journal
    assert ledger.journal.count() == 1
    ledger.close(timeout=0.1)
    assert "is not reachable (usage rows go to the journal" in caplog.text
    assert "1 rows wait in the journal" in caplog.text
    # Told once each (the request let through came within the interval of /readyz's failed ping).
    assert sorted((line["event"], line["store"], line["backend"]) for line in event_lines) == [
        ("store_unavailable", "ledger", "postgresql"),
        ("store_unavailable", "ratelimit", "redis"),
    ]


def test_rows_arriving_together_are_written_in_one_insert(tmp_path, monkeypatch):
    ledger = Ledger(f"sqlite:///{tmp_path}/usage.db", str(tmp_path / "journal.db"))
    ledger.linger_s = 0.5
    batches = []
    insert = ledger.database.insert
    monkeypatch.setattr(
        ledger.database, "insert", lambda rows, **kw: (batches.append(len(rows)), insert(rows, **kw))[1]
    )
    for i in range(50):
        ledger.record(row(i))
    assert ledger.flush(10)
    assert batches == [50] and len(ledger.query(limit=100)) == 50
    ledger.close()


def metric(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


def test_any_value_a_row_can_carry_is_stored_in_a_safe_form(ledger):
    """Caller and upstream strings that UTF-8 or PostgreSQL cannot hold, over-long text, and
    token counts past a 32-bit column: each stored as escaped, cut or capped text and numbers."""
    poison = row(
        1,
        model="a\ud800b",  # a lone surrogate (JSON's \ud800)
        upstream_model="x" * 1000,
        error_code="\udfff" + "e" * 100,
        size="\x00",
        quality="é\x00",
        client_ip="1" * 500,
        total_tokens=10**30,
        input_tokens=-(10**20),
        status=200,
    )
    ledger.record(poison)
    ledger.record(row(2, model="fine"))
    assert ledger.flush(10)
    got = {r["request_id"]: r for r in ledger.query()}
    assert got["req-1"]["model"] == "a\\ud800b"
    assert got["req-1"]["upstream_model"] == "x" * 256
    assert got["req-1"]["error_code"] == ("\\udfff" + "e" * 100)[:64]
    assert (got["req-1"]["size"], got["req-1"]["quality"]) == ("\\x00", "é\\x00")
    assert len(got["req-1"]["client_ip"]) == 64
    assert (got["req-1"]["total_tokens"], got["req-1"]["input_tokens"]) == (2**31 - 1, -(2**31))
    assert got["req-2"]["model"] == "fine"


def test_a_row_the_database_refuses_is_logged_counted_and_left_out_alone(ledger, monkeypatch, caplog):
    """Whatever goes wrong with one row's values, the others are written and the writer goes on."""
    from aisix_flask.usage import ledger as ledger_module

    real = ledger_module.storable

    def explosive(r):
        values = real(r)
        if r.request_id == "req-2":
            values["status"] = object()  # the driver cannot bind it: not a SQLAlchemyError
        return values

    monkeypatch.setattr(ledger_module, "storable", explosive)
    dropped = metric("aisix_ledger_rows_dropped_total")
    with caplog.at_level(logging.ERROR):
        for i in range(1, 4):
            ledger.record(row(i))
        assert ledger.flush(10)
    assert sorted(r["request_id"] for r in ledger.query()) == ["req-1", "req-3"]
    assert metric("aisix_ledger_rows_dropped_total") == dropped + 1
    assert "row of request req-2 cannot be stored and is left out" in caplog.text
    ledger.record(row(4))  # the writer is still there
    assert ledger.flush(10) and len(ledger.query()) == 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stopped_writer_shows_in_readyz_and_the_metric_and_is_started_again(app, monkeypatch):
    ledger = app.extensions["aisix"].ledger
    client = app.test_client()
    ledger.record(row(1))
    assert ledger.flush(10)

    def crash(rows, **kwargs):
        raise SystemExit  # what no `except Exception` catches

    monkeypatch.setattr(ledger.database, "insert", crash)
    ledger.record(row(2))
    ledger._thread.join(5)
    assert not ledger._thread.is_alive()
    assert metric("aisix_ledger_writer_up") == 0
    monkeypatch.undo()
    r = client.get("/readyz")
    assert r.status_code == 503 and "writer" in r.get_json()["error"]["message"]
    assert metric("aisix_ledger_writer_up") == 1 and metric("aisix_ledger_writer_restarts_total") >= 1
    assert client.get("/readyz").status_code == 200
    ledger.record(row(3))
    assert ledger.flush(10)
    assert [r["request_id"] for r in ledger.query()] == ["req-3", "req-1"]  # req-2 died with the thread
