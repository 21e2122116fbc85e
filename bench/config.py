"""The bench's gateway config: what a real deployment's looks like (caller keys, priced models,
rate limits on SQLite or Redis, a keyword guardrail, the SQLite ledger, the access log), and the
variants the breakdown rows take apart."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from aisix_flask.config import ConfigError, load_config
from bench.harness import KEY

FULL_LIMITS = "rpm: 100000000, tpm: 1000000000, concurrency: 5000"


def gateway_config(
    tmp: Path,
    upstream: str,
    limits: str = FULL_LIMITS,
    access_log: bool = True,
    store: str = "",
    body_limit: int | None = None,
) -> str:
    """The bench's gateway: priced models, rate limits on the key and on each model (none when
    ``limits`` is empty) kept in SQLite (or ``store``), a keyword guardrail, the SQLite ledger,
    the access log;
    ``body_limit`` raises request_body_limit_bytes (large image edits)."""
    store = store or f"sqlite:///{tmp}/ratelimit.db"
    limits = f", rate_limit: {{{limits}}}" if limits else ""
    body = f"\n  request_body_limit_bytes: {body_limit}" if body_limit else ""
    return f"""
gateway:
  access_log: {str(access_log).lower()}{body}
  usage: {{database_url: "sqlite:///{tmp}/usage.db", journal: "{tmp}/usage-journal.db"}}
  ratelimit: {{storage_url: "{store}"}}
provider_keys:
  - {{display_name: openai-main, provider: openai, api_key: sk-bench, api_base: "{upstream}"}}
models:
  - {{display_name: image-prod, provider: openai, model_name: gpt-image-1, provider_key: openai-main{limits},
      pricing: {{per_million_tokens: {{input_text: 5, input_image: 10, output_image: 40}}}}}}
  - {{display_name: chat-prod, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main{limits},
      pricing: {{per_million_tokens: {{input: 0.15, output: 0.6}}}}}}
api_keys:
  - {{display_name: bench, key_hash: {hashlib.sha256(KEY.encode()).hexdigest()}{limits}}}
guardrails:
  - name: no-secrets
    kind: keyword
    patterns: [{{kind: regex, value: "(?i)password\\\\s*="}}, {{kind: literal, value: forbidden phrase}}]
"""


# Throughput at c=64 with parts of the config taken away, each beside the bare proxy.
BREAKDOWN = [
    ("limits: rpm + tpm + concurrency", FULL_LIMITS, True),
    ("limits: rpm + tpm (no concurrency slots)", "rpm: 100000000, tpm: 1000000000", True),
    ("no rate limits", "", True),
    ("no rate limits, no access log", "", False),
]


REDIS_STORE = "redis://127.0.0.1:6379/10"  # a database no test uses


def write_config(path: Path, text: str) -> None:
    """Write a gateway config and check it as the gateway will: a live edit the gateway rejects
    would leave it serving the previous config, and the row would measure the wrong thing."""
    path.write_text(text)
    try:
        registry = load_config(str(path))
    except ConfigError as e:
        sys.exit(f"the bench's config {path.name} is broken: {'; '.join(e.problems)}")
    if registry.warnings:
        sys.exit(
            f"the bench's config {path.name} has fields the gateway ignores: {'; '.join(registry.warnings)}"
        )
