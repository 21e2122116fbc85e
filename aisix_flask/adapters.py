"""The adapter table: which operations each protocol bridge (a provider key's ``adapter``) carries.

A description both the config (which adapters exist, which one a provider gets by default) and
the request path (which routes a key can serve) read; it imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Adapter:
    """A protocol bridge and the operations (``images``, ``chat``…) it implements."""

    name: str
    operations: frozenset[str]

    def implements(self, operation: str) -> bool:
        """Tell whether this adapter can carry ``operation``."""
        return operation in self.operations


ADAPTERS: dict[str, Adapter] = {
    "openai": Adapter("openai", frozenset({"images", "chat", "embeddings"})),
    "openai-compatible": Adapter("openai-compatible", frozenset({"chat", "embeddings", "rerank"})),
    # chat translated to the Messages API; count_tokens is Anthropic's own (POST /v1/messages/...)
    "anthropic": Adapter("anthropic", frozenset({"chat", "count_tokens"})),
    "azure-openai": Adapter("azure-openai", frozenset({"chat", "embeddings"})),
}
# The provider whose own bridge an adapter is, where the names differ.
_BRIDGE_OF = {"azure": "azure-openai"}


def default_adapter(provider: str) -> str:
    """The adapter a provider key gets when it names none: the provider's own bridge if there is
    one, else ``openai-compatible`` (README, configuration)."""
    name = _BRIDGE_OF.get(provider, provider)
    return name if name in ADAPTERS else "openai-compatible"


def supporting(operation: str) -> list[str]:
    """The adapters that implement ``operation``, in table order."""
    return [name for name, adapter in ADAPTERS.items() if adapter.implements(operation)]
