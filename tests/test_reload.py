"""Live config: edits take effect without a restart; a broken edit is rejected whole."""

from __future__ import annotations

import logging
import os

import pytest

from aisix_flask.gateway import Gateway

from .conftest import CALLER_KEY as CALLER
from .conftest import IMAGES_URL, auth, sha, write_config

ROUTE = "/v1/images/generations"
NEW_KEY = "late-SECRET-2d9e11"


@pytest.fixture
def live(make_app, config, tmp_path, monkeypatch):
    """An app that looks at its config file on every request; returns (client, path, config)."""
    monkeypatch.setattr(Gateway, "reload_interval_s", 0.0)
    app = make_app(config)
    return app.test_client(), tmp_path / "config-0.yaml", config


def rewrite(path, config):
    """Replace the file the way editors and config tools do (write aside, rename)."""
    write_config(path.with_suffix(".tmp"), config)
    os.replace(path.with_suffix(".tmp"), path)


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
    with caplog.at_level(logging.ERROR):
        upstream.post(IMAGES_URL, json={"created": 1, "data": []})
        assert post(client, CALLER).status_code == 200
    assert "the change is rejected; the last good config keeps serving" in caplog.text
    config["models"][0]["provider_key"] = "nope"  # valid YAML, invalid config: rejected whole
    rewrite(path, config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200
    assert "models[0].provider_key: unknown provider key 'nope'" in caplog.text
    config["models"][0]["provider_key"] = "openai-main"
    config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
    rewrite(path, config)  # fixed: now it applies
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, NEW_KEY).status_code == 200


def test_a_deleted_file_keeps_serving(live, upstream):
    client, path, _ = live
    path.unlink()
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200


def test_store_urls_need_a_restart(live, upstream, caplog, tmp_path):
    client, path, config = live
    config["gateway"]["usage"]["database_url"] = f"sqlite:///{tmp_path}/other.db"
    rewrite(path, config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": []})
    assert post(client, CALLER).status_code == 200
    assert "usage_database_url changed; it takes effect after a restart" in caplog.text
    assert not (tmp_path / "other.db").exists()


def test_the_file_is_looked_at_once_a_second(make_app, config, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("aisix_flask.gateway._signature", lambda path: calls.append(path))
    client = make_app(config).test_client()
    for _ in range(20):
        client.get("/readyz")
    assert len(calls) <= 1


def test_an_edit_while_a_worker_boots_is_not_missed(config, tmp_path, monkeypatch, upstream):
    """The file changes after it was read but before the worker finished starting."""
    from aisix_flask import create_app, gateway

    monkeypatch.setattr(Gateway, "reload_interval_s", 0.0)
    path = write_config(tmp_path / "boot.yaml", config)
    open_ledger = gateway.Ledger

    def ledger_then_edit(url):
        config["api_keys"].append({"display_name": "late", "key_hash": sha(NEW_KEY)})
        rewrite(path, config)
        return open_ledger(url)

    monkeypatch.setattr(gateway, "Ledger", ledger_then_edit)
    app = create_app({"AISIX_CONFIG": str(path)})
    try:
        upstream.post(IMAGES_URL, json={"created": 1, "data": []})
        assert post(app.test_client(), NEW_KEY).status_code == 200
    finally:
        app.extensions["aisix"].ledger.close()
