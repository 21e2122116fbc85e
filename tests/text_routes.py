"""The chat, embeddings and rerank routes through the real gunicorn (a pytest plugin, see
conftest.py): their config, a ``gateway`` serving it for a test module, and what tests read back
(its usage rows, the calls the fake upstream saw)."""

from __future__ import annotations

import time

import pytest
import requests

from .integration import ENV, gateway_config, usage_rows
from .serving import Gunicorn

TEXT_MODELS = """
  - {display_name: chat-prod, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main}
  - {display_name: quick-chat, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main,
     timeout_s: 1.5}
  - {display_name: deepseek-chat, provider: deepseek, model_name: deepseek-chat, provider_key: deepseek}
  - {display_name: embed, provider: openai, model_name: text-embedding-3-small, provider_key: openai-main}
  - {display_name: reranker, provider: jina, model_name: jina-reranker-v2, provider_key: jina}
"""


def text_config(tmp_path, fake, keepalive_s: float = 0.3):
    """The integration config, with chat, embeddings and rerank models and an output guardrail."""
    path = gateway_config(tmp_path, fake)
    text = path.read_text().replace("models:\n", "models:\n" + TEXT_MODELS.lstrip("\n"), 1)
    jina = f'  - {{display_name: jina, provider: jina, api_key: jk, api_base: "{fake.url}"}}\n'
    text = text.replace("provider_keys:\n", "provider_keys:\n" + jina, 1)
    text = text.replace("gateway:\n", f"gateway:\n  stream_keepalive_s: {keepalive_s}\n", 1)
    text += """  - name: no-launch-codes
    kind: keyword
    hook_point: output
    patterns: [{kind: literal, value: launch code}]
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake):
    server = Gunicorn(text_config(tmp_path_factory.mktemp("routes"), fake), workers=2, threads=16, env=ENV)
    yield server
    assert server.stop() == 0


def rows(gateway, route: str) -> list[dict]:
    """The served gateway's usage rows of ``route``."""
    return [row for row in usage_rows(gateway) if row["route"] == route]


def settled_rows(gateway, route: str) -> list[dict]:
    """``rows`` once the rows of calls that ended before have been written (the ledger writes in
    batches, a fraction of a second after a call ends)."""
    seen = rows(gateway, route)
    while True:
        time.sleep(0.5)
        now = rows(gateway, route)
        if len(now) == len(seen):
            return now
        seen = now


def fake_calls(fake, path: str) -> list[dict]:
    calls = requests.get(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5).json()
    return [c for c in calls if c["path"].endswith(path)]
