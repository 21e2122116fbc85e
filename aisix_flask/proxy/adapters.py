"""Protocol bridges: which operations an adapter implements and where it sends them."""

from __future__ import annotations

from dataclasses import dataclass

OPENAI_API_BASE = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Bridge:
    """A protocol bridge (a provider key's ``adapter``)."""

    name: str
    operations: frozenset[str]

    def implements(self, operation: str) -> bool:
        """Tell whether this bridge can carry ``operation`` (e.g. ``images``)."""
        return operation in self.operations


BRIDGES: dict[str, Bridge] = {
    "openai": Bridge("openai", frozenset({"images", "chat", "embeddings"})),
    "openai-compatible": Bridge("openai-compatible", frozenset({"chat", "embeddings", "rerank"})),
}


def default_adapter(provider: str) -> str:
    """The adapter a provider key gets when it names none (README, configuration)."""
    return provider if provider in BRIDGES else "openai-compatible"


def endpoint_url(api_base: str | None, path: str) -> str:
    """Join ``api_base`` and an operation path, tolerating a trailing slash or a pasted path."""
    base = (api_base or OPENAI_API_BASE).rstrip("/")
    if base.endswith(path):
        base = base[: -len(path)].rstrip("/")
    return f"{base}{path}"
