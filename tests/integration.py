"""What the tests that run the real gunicorn share: the config a user would write, pointing at the
loopback fake upstream (``gateway_config``), the caller, admin and upstream keys it names, the
environment that supplies them (``ENV``), and the usage rows a served gateway reads back.
tests/serving.py starts gunicorn; tests/test_integration.py is the first file to use both."""

from __future__ import annotations

from pathlib import Path

import requests

from .conftest import sha
from .fake_upstream import FakeOpenAI

DEV_KEY = "integration-dev-SECRET-3b1f"
LIMITED_KEY = "integration-limited-SECRET-77de"
LOAD_KEY = "integration-load-SECRET-e901"
ADMIN_KEY = "integration-admin-SECRET-4c2a"
UPSTREAM_KEY = "sk-integration-upstream-SECRET-a8c3"
SECRETS = (DEV_KEY, LIMITED_KEY, LOAD_KEY, ADMIN_KEY, UPSTREAM_KEY)
# The config reads the dev and admin keys and the upstream key from the environment, as a user's would.
ENV = {"IT_DEV_KEY": DEV_KEY, "IT_ADMIN_KEY": ADMIN_KEY, "IT_UPSTREAM_KEY": UPSTREAM_KEY}


def gateway_config(
    tmp_path,
    fake: FakeOpenAI,
    *,
    storage_url: str | None = None,
    usage_url: str | None = None,
    load: str = "load",
) -> Path:
    """A config file as a user writes it, pointing at the fake upstream.

    ``load`` is the rest of the load key's row after its name, e.g. ``load, rate_limit: {rpm: 5}``.
    """
    path = tmp_path / "config.yaml"
    storage_url = storage_url or f"sqlite:///{tmp_path}/ratelimit.db"
    usage_url = usage_url or f"sqlite:///{tmp_path}/usage.db"
    path.write_text(
        f"""
gateway:
  usage: {{database_url: "{usage_url}", journal: "{tmp_path}/usage-journal.db"}}
  ratelimit: {{storage_url: "{storage_url}"}}
  admin_keys: [{{key_env: IT_ADMIN_KEY}}]
provider_keys:
  - {{display_name: openai-main, provider: openai, api_key: "${{IT_UPSTREAM_KEY}}", api_base: "{fake.url}"}}
  - {{display_name: compat, provider: openai, adapter: openai-compatible, api_key: k, api_base: "{fake.url}"}}
  - {{display_name: deepseek, provider: deepseek, api_key: k, api_base: "{fake.url}"}}
models:
  - {{display_name: image-prod, provider: openai, model_name: gpt-image-1, provider_key: openai-main}}
  - {{display_name: dalle, provider: openai, model_name: dall-e-3, provider_key: openai-main, timeout_s: 2}}
  - {{display_name: compat-image, provider: openai, model_name: x, provider_key: compat}}
  - {{display_name: deepseek-image, provider: deepseek, model_name: x, provider_key: deepseek}}
api_keys:
  - {{display_name: dev, key_env: IT_DEV_KEY}}
  - {{display_name: limited, key_hash: {sha(LIMITED_KEY)}, allowed_models: [dalle]}}
  - {{key_hash: {sha(LOAD_KEY)}, display_name: {load}}}
guardrails:
  - name: no-secrets
    kind: keyword
    patterns: [{{kind: literal, value: forbidden phrase}}]
"""
    )
    return path


def usage_rows(gateway, **params) -> list[dict]:
    """The served gateway's usage rows (GET /admin/v1/usage), up to 1,000, filtered by ``params``."""
    r = requests.get(
        f"{gateway.url}/admin/v1/usage", params={"limit": 1000, **params}, headers={"x-api-key": ADMIN_KEY}
    )
    assert r.status_code == 200
    return r.json()["data"]
