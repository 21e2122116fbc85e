"""Where an OpenAI-API operation is sent: a provider key's ``api_base`` joined with its path."""

from __future__ import annotations

OPENAI_API_BASE = "https://api.openai.com/v1"


def endpoint_url(api_base: str | None, path: str) -> str:
    """Join ``api_base`` and an operation path, tolerating a trailing slash or a pasted path."""
    base = (api_base or OPENAI_API_BASE).rstrip("/")
    if base.endswith(path):
        base = base[: -len(path)].rstrip("/")
    return f"{base}{path}"
