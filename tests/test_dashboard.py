"""GET /admin/: the usage page, through the Flask client and in a real headless Chromium."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from aisix_flask.usage.ledger import Ledger
from aisix_flask.usage.row import UsageRow

from .conftest import ADMIN_KEY, auth

NOW = datetime.now(UTC).replace(tzinfo=None)


def seed(ledger: Ledger) -> None:
    rows = [
        ("alice", "image-prod", 200, 2, 0.16, NOW - timedelta(days=2)),
        ("alice", "image-prod", 200, 1, 0.08, NOW - timedelta(days=1)),
        ("bob", "dalle", 200, 1, 0.04, NOW),
        ("bob", "dalle", 502, 0, None, NOW),
        ("mallory", "<script>alert(1)</script>", 404, 0, None, NOW),
    ]
    for i, (key, model, status, images, cost, when) in enumerate(rows):
        error = None if status < 400 else ("upstream_server_error" if status == 502 else "model_not_found")
        ledger.record(UsageRow(f"req-{i}", key, "/v1/images/generations", None, created_at=when, model=model,
                               status=status, images=images, cost_usd=cost, error_code=error))  # fmt: skip
    ledger.flush(10)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{key}".encode()).decode()}


def test_page_needs_the_admin_key_and_asks_a_browser_for_it(client):
    r = client.get("/admin/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.get("/admin/", headers=basic("caller-SECRET-91b2e4")).status_code == 401
    assert client.get("/admin/", headers=auth(ADMIN_KEY)).status_code == 200


def test_page_shows_days_keys_models_and_errors(app):
    seed(app.extensions["aisix"].ledger)
    r = app.test_client().get("/admin/?days=7", headers=basic(ADMIN_KEY))
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert '<b id="total-requests">5</b>' in html
    assert '<b id="total-images">4</b>' in html
    assert '<b id="total-cost">0.2800</b>' in html
    assert html.count('<rect class="requests"') == 7 + 1  # a bar a day, and the legend
    for text in ("alice", "bob", "image-prod", "dalle", "upstream_server_error", "req-3"):
        assert text in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def table(html: str, table_id: str) -> list[list[str]]:
    """The cells of a table of the page, row by row, the header left out."""
    body = html.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S) for tr in body.split("<tr>")]
    return [cells for cells in rows if cells]


def test_a_target_table_only_once_a_row_has_a_target(app):
    """Without routing (no target in the period, or every target the alias named) the page has no
    per-target table: it would repeat the one per alias. With a routed row, it has every target
    and a (none) line."""
    ledger = app.extensions["aisix"].ledger
    seed(ledger)  # no targets
    ledger.record(UsageRow("old", "alice", "/v1/chat/completions", None, created_at=NOW - timedelta(days=20),
                           model="chat", target="chat-a", status=200))  # fmt: skip
    ledger.record(UsageRow("direct", "alice", "/v1/chat/completions", None, created_at=NOW,
                           model="chat-a", target="chat-a", status=200, cost_usd=0.01))  # fmt: skip
    ledger.flush(10)
    client = app.test_client()
    html = client.get("/admin/?days=7", headers=basic(ADMIN_KEY)).get_data(as_text=True)
    assert 'id="by-model"' in html and 'id="by-target"' not in html
    routed = [
        ("chat", "chat-a", 200, 0.01),
        ("chat", "chat-b", 200, 0.02),
        ("chat", "chat-b", 502, None),
    ]
    for i, (model, target, status, cost) in enumerate(routed):
        ledger.record(UsageRow(f"chat-{i}", "alice", "/v1/chat/completions", None, created_at=NOW,
                               model=model, target=target, status=status, cost_usd=cost))  # fmt: skip
    ledger.flush(10)
    html = client.get("/admin/?days=7", headers=basic(ADMIN_KEY)).get_data(as_text=True)
    assert html.index('id="by-model"') < html.index('id="by-target"') < html.index('id="by-route"')
    assert table(html, "by-target") == [
        ["(none)", "5", "2", "4", "0", "0.2800"],  # the seeded rows
        ["chat-a", "2", "0", "0", "0", "0.0200"],
        ["chat-b", "2", "1", "0", "0", "0.0200"],
    ]


def test_a_small_cost_is_never_shown_as_zero(app):
    """Embedding tokens cost millionths of a dollar: the card, the table, the bar's title and its
    label show 0.000042, not 0.0000 (or $0.00 under the bar)."""
    ledger = app.extensions["aisix"].ledger
    ledger.record(UsageRow("req-0", "alice", "/v1/embeddings", None, created_at=NOW, model="embed",
                           status=200, cost_usd=0.000042))  # fmt: skip
    ledger.flush(10)
    html = app.test_client().get("/admin/?days=7", headers=basic(ADMIN_KEY)).get_data(as_text=True)
    assert '<b id="total-cost">0.000042</b>' in html
    assert html.count('<td class="n">0.000042</td>') == 3  # per key, per alias, per route
    assert "images, $0.000042</title>" in html and ">$0.000042</text>" in html
    assert ">0.0000<" not in html and "$0.00<" not in html


@pytest.mark.skipif(
    not shutil.which("chromium") and not os.environ.get("CI"),
    reason="needs Debian's chromium: sudo apt-get install chromium (.ci/run installs it)",
)
def test_page_in_headless_chromium(tmp_path, fake):
    from .integration import ADMIN_KEY as IT_ADMIN_KEY
    from .integration import ENV, gateway_config
    from .serving import Gunicorn

    config = gateway_config(tmp_path, fake)
    seeding = Ledger(f"sqlite:///{tmp_path}/usage.db", f"{tmp_path}/journal.db")
    seed(seeding)
    seeding.close()
    server = Gunicorn(config, workers=1, threads=4, env=ENV)
    screenshot = tmp_path / "usage-page.png"
    url = f"http://admin:{IT_ADMIN_KEY}@127.0.0.1:{server.port}/admin/?days=7"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1100,1000"]  # fmt: skip
    try:
        dom = subprocess.run(
            ["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90
        )
        subprocess.run(
            ["chromium", *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=90
        )
    finally:
        server.stop()
    html = dom.stdout
    assert '<b id="total-requests">5</b>' in html, dom.stderr[-2000:]
    for text in ("alice", "bob", "upstream_server_error", "req-3"):
        assert text in html
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    if os.environ.get("AISIX_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["AISIX_SCREENSHOT"])  # how docs/usage-page.png is made
