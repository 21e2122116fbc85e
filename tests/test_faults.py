"""Upstream faults through the real gunicorn: each answers as docs/contract.md says, is recorded once,
and no worker crashes."""

from __future__ import annotations

import re
import time

import pytest
import requests

from .integration import ADMIN_KEY, DEV_KEY, ENV, gateway_config
from .serving import Gunicorn, free_port, generate

FAULTS = [
    # prompt, model, status, error type, error code
    ("[status:500]", "image-prod", 502, "upstream_error", "upstream_server_error"),
    ("[status:503]", "image-prod", 502, "upstream_error", "upstream_server_error"),
    ("[status:401]", "image-prod", 502, "upstream_error", "upstream_auth_failed"),
    ("[status:429]", "image-prod", 429, None, None),  # passed through, with its Retry-After
    ("[status:400]", "image-prod", 400, None, None),  # passed through
    ("[sleep:3]", "dalle", 504, "timeout", "upstream_timeout"),  # dalle's timeout_s is 2
    ("[trickle:6]", "dalle", 504, "timeout", "upstream_timeout"),  # bytes keep coming, too slowly
    ("[reset]", "image-prod", 502, "upstream_error", "upstream_unreachable"),
    ("[html]", "image-prod", 502, "upstream_error", "upstream_bad_response"),
    ("[redirect]", "image-prod", 502, "upstream_error", "upstream_bad_response"),
    ("p", "refused", 502, "upstream_error", "upstream_unreachable"),  # nothing listens there
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake):
    tmp_path = tmp_path_factory.mktemp("faults")
    config = gateway_config(tmp_path, fake)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    refused_key = f'{{display_name: refused-key, provider: openai, api_key: k, api_base: "{closed}"}}'
    refused = "{display_name: refused, provider: openai, model_name: x, provider_key: refused-key}"
    text = config.read_text()
    text = text.replace("models:\n", f"models:\n  - {refused}\n")
    config.write_text(text.replace("provider_keys:\n", f"provider_keys:\n  - {refused_key}\n"))
    server = Gunicorn(config, workers=2, threads=8, env=ENV)
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize(("prompt", "model", "status", "type_", "code"), FAULTS)
def test_fault(gateway, prompt, model, status, type_, code):
    r = generate(gateway.url, DEV_KEY, model, prompt)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    error = r.json()["error"]
    if code is not None:  # the gateway's own envelope
        assert (error["type"], error["code"]) == (type_, code), error["message"]
    else:  # passed through: the upstream's own envelope
        assert error["message"].startswith("fake upstream error")
    if status == 429:
        assert r.headers["Retry-After"] == "7"
    # Retry only what cannot have been generated: a rate limit, or a connection never made.
    assert r.headers["x-should-retry"] == ("true" if status == 429 or model == "refused" else "false")
    [row] = ledger_rows(gateway.url, r.headers["x-aisix-request-id"])
    # A passed-through error is recorded with the upstream's own error type (the fake's is server_error).
    assert (row["status"], row["error_code"]) == (status, code or "server_error")


def ledger_rows(url: str, request_id: str) -> list[dict]:
    """The ledger rows of one request, once the writer has caught up (at most 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        rows = requests.get(
            f"{url}/admin/v1/usage", params={"limit": 1000}, headers={"x-api-key": ADMIN_KEY}, timeout=10
        ).json()["data"]
        mine = [row for row in rows if row["request_id"] == request_id]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def test_no_worker_crashed(gateway):
    """After every fault the same workers still serve: no restarts, no tracebacks."""
    for _ in range(10):
        r = generate(gateway.url, DEV_KEY)
        assert r.status_code == 200, r.text
    log = gateway.log.read_text()
    assert len(re.findall(r"Booting worker", log)) == 2
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log and "exited with code" not in log


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_no_request_can_stop_the_ledger(tmp_path, fake, request, backend):
    """Requests that carry what a database cannot store (from the caller or from the upstream)
    are each recorded, and so is every request after them: rows == requests, in every worker."""
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path}/usage.db" if backend == "sqlite" else request.getfixturevalue("pg_schema")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS usage"))
    server = Gunicorn(gateway_config(tmp_path, fake, usage_url=url), workers=2, threads=4, env=ENV)
    headers = {"x-api-key": DEV_KEY, "Content-Type": "application/json"}
    poison = [
        rb'{"model": "\ud800", "prompt": ""}',  # the request: a lone surrogate escape
        rb'{"model": "image-prod", "prompt": "a\ud800b"}',
        rb'{"model": "image-prod\u0000", "prompt": "p"}',  # a NUL: 404, and PostgreSQL refuses NULs
        rb'{"model": "dalle", "prompt": "[poison]"}',  # the upstream's error code
        rb'{"model": "dalle", "prompt": "[huge-usage]"}',  # the upstream's token counts
        b'{"model": "' + b"m" * 5000 + b'", "prompt": "p"}',
    ]
    try:
        statuses = [
            requests.post(
                f"{server.url}/v1/images/generations", data=body, headers=headers, timeout=30
            ).status_code
            for body in poison * 4
        ]
        statuses += [generate(server.url, DEV_KEY, "dalle", f"after {i}").status_code for i in range(40)]
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
    assert statuses[:6] == [400, 400, 404, 400, 200, 404] and statuses[24:] == [200] * 40
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT count(*) FROM usage WHERE api_key = 'dev'")).scalar()
        codes = conn.execute(text("SELECT error_code, total_tokens FROM usage WHERE status = 400")).fetchall()
    engine.dispose()
    assert recorded == len(statuses) == 64
    assert ("\\ud800\\x00", 0) in [tuple(c) for c in codes]
    log = server.log.read_text()
    assert "Traceback" not in log and "not written" not in log and "left out" not in log
