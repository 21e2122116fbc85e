"""Live config: edits take effect without a restart; a broken edit is rejected whole."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from aisix_flask.gateway import Gateway

from .conftest import CALLER_KEY as CALLER
from .conftest import CHAT_URL, IMAGES_URL, auth, named, sha, write_config
from .routed import CHAT, SECOND, chat
from .watching import looked_at

ROUTE = "/v1/images/generations"
NEW_KEY = "late-SECRET-2d9e11"


@pytest.fixture
def live(make_app, config, tmp_path, monkeypatch):
    """An app whose watcher reads a changed file at its next look, however recent the change;
    returns (client, path, config). ``rewrite`` waits for that look."""
    monkeypatch.setattr(Gateway, "settle_s", 0.0)
    monkeypatch.setattr(Gateway, "watch_interval_s", 0.02)
    app = make_app(config)
    return app.test_client(), tmp_path / "config-0.yaml", config


def rewrite(path, config):
    """Replace the file the way editors and config tools do (write aside, rename), and wait until
    the watchers have looked at it (``looked_at``)."""
    write_config(path.with_suffix(".tmp"), config)
    os.replace(path.with_suffix(".tmp"), path)
    looked_at(path)


def post(client, key, model="image-prod"):
    return client.post(ROUTE, headers=auth(key), json={"model": model, "prompt": "p"})


def test_a_new_key_and_model_work_without_a_restart(live, upstream):
    client, path, config = live
    assert post(client, NEW_KEY).status_code == 401
    config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
    config["models"].append({"display_name": "new-alias", "provider": "openai", "model_name": "gpt-image-1",
                             "provider_key": "openai-main"})  # fmt: skip
    rewrite(path, config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, NEW_KEY, "new-alias").status_code == 200


def test_a_new_guardrail_and_limit_apply(live, upstream):
    client, path, config = live
    config["guardrails"].append(
        {"name": "no-cats", "kind": "keyword", "patterns": [{"kind": "literal", "value": "p"}]}
    )
    rewrite(path, config)
    assert post(client, CALLER).status_code == 422


def test_a_broken_edit_keeps_the_last_good_config(live, upstream, caplog):
    client, path, config = live
    path.write_text("models: [\n  - {display_name: broken\n")  # an editor halfway through saving
    looked_at(path)
    with caplog.at_level(logging.ERROR):
        upstream.post(IMAGES_URL, json={"created": 1, "data": []})
        assert post(client, CALLER).status_code == 200
    assert "the change is rejected; the last good config keeps serving" in caplog.text
    # Valid YAML, invalid config: rejected whole.
    named(config, "models", "image-prod")["provider_key"] = "nope"
    rewrite(path, config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200
    assert "models[0].provider_key: unknown provider key 'nope'" in caplog.text
    named(config, "models", "image-prod")["provider_key"] = "openai-main"
    config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
    rewrite(path, config)  # fixed: now it applies
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, NEW_KEY).status_code == 200


def test_a_deleted_file_keeps_serving(live, upstream):
    client, path, _ = live
    path.unlink()
    time.sleep(0.2)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200


def test_store_urls_need_a_restart(live, upstream, caplog, tmp_path):
    client, path, config = live
    config["gateway"]["usage"]["database_url"] = f"sqlite:///{tmp_path}/other.db"
    rewrite(path, config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200
    assert "gateway.usage changed; it takes effect after a restart" in caplog.text
    assert not (tmp_path / "other.db").exists()


def test_requests_never_look_at_the_file(make_app, config, monkeypatch):
    """The watcher thread does that: a request never waits for a stat or a reload."""
    calls = []
    monkeypatch.setattr(Gateway, "watch_interval_s", 60.0)  # one look at start, then none
    client = make_app(config).test_client()
    time.sleep(0.1)
    monkeypatch.setattr("aisix_flask.gateway._signature", lambda path: calls.append(path))
    for _ in range(20):
        client.get("/readyz")
    assert calls == []


def test_a_worker_with_no_traffic_follows_edits(live):
    """No request between the edits: the watcher loads the good one and rejects the broken one."""
    client, path, config = live
    gateway = client.application.extensions["aisix"]
    config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
    rewrite(path, config)
    path.write_text(path.read_text().replace("openai-main", "typo", 1))  # then broken
    looked_at(path)
    assert "late" in {k.display_name for k in gateway.config().api_keys}


@pytest.mark.parametrize(
    ("content", "logged"),
    [
        ("", "the config file is empty"),  # an editor that writes in place truncates first
        ("# nothing but a comment\n", "the config file is empty"),
        ("{}\n", "the config file is empty"),
        ("api_keys:\n", "api_keys: Field may not be null"),  # cut right after the key
    ],
)
def test_an_emptied_file_is_rejected_on_reload(live, upstream, caplog, content, logged):
    client, path, _ = live
    with caplog.at_level(logging.ERROR):
        path.write_text(content)
        looked_at(path)
    assert logged in caplog.text and "the last good config keeps serving" in caplog.text
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200


@pytest.mark.parametrize("cut", ["api_keys", "models"])
def test_a_file_cut_short_that_drops_every_key_or_model_is_rejected(live, upstream, caplog, cut):
    """Valid YAML and a valid config, yet it would refuse every caller: taken for a half-written
    file. A restart with such a file does start (with a warning)."""
    client, path, config = live
    del config[cut]
    with caplog.at_level(logging.ERROR):
        rewrite(path, config)
    assert f"the change removes every one of {cut}" in caplog.text
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200


def test_a_file_still_being_written_is_read_once_it_settles(make_app, config, monkeypatch, upstream):
    monkeypatch.setattr(Gateway, "watch_interval_s", 0.02)
    monkeypatch.setattr(Gateway, "settle_s", 0.5)
    app = make_app(config)
    gateway, path = app.extensions["aisix"], Path(app.extensions["aisix"].path)
    config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
    write_config(path, config)
    time.sleep(0.2)
    assert "late" not in {k.display_name for k in gateway.config().api_keys}  # modified 0.2 s ago
    looked_at(path)  # once it has settled
    assert "late" in {k.display_name for k in gateway.config().api_keys}


def test_an_edit_while_a_worker_boots_is_not_missed(config, tmp_path, monkeypatch, upstream):
    """The file changes after it was read but before the worker finished starting."""
    from aisix_flask import create_app, gateway

    monkeypatch.setattr(Gateway, "settle_s", 0.0)
    monkeypatch.setattr(Gateway, "watch_interval_s", 0.02)
    path = write_config(tmp_path / "boot.yaml", config)
    open_ledger = gateway.Ledger

    def ledger_then_edit(*args):
        config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
        rewrite(path, config)
        return open_ledger(*args)

    monkeypatch.setattr(gateway, "Ledger", ledger_then_edit)
    app = create_app({"AISIX_CONFIG": str(path)})
    looked_at(path)
    try:
        upstream.post(IMAGES_URL, json={"created": 1, "data": []})
        assert post(app.test_client(), NEW_KEY).status_code == 200
    finally:
        app.extensions["aisix"].close()


def test_a_routing_edit_applies_live(make_app, routed, tmp_path, monkeypatch, upstream):
    monkeypatch.setattr(Gateway, "settle_s", 0.0)
    monkeypatch.setattr(Gateway, "watch_interval_s", 0.02)
    client = make_app(routed).test_client()
    upstream.post(CHAT_URL, json=CHAT)
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    assert chat(client).headers["x-aisix-target"] == "chat-prod"
    named(routed, "models", "chat-routed")["routing"]["targets"].reverse()
    rewrite(tmp_path / "config-0.yaml", routed)
    assert chat(client).headers["x-aisix-target"] == "chat-b"
    named(routed, "models", "chat-routed")["routing"]["targets"] = [{"model": "nope"}]
    rewrite(tmp_path / "config-0.yaml", routed)  # rejected whole: the last good routing serves
    assert chat(client).headers["x-aisix-target"] == "chat-b"
