"""How each adapter (a provider key's protocol bridge) speaks to its upstream: where a request goes,
with which credential headers, what its body becomes, and what the upstream's answers and events
become for the caller, who always speaks OpenAI's API (README, the adapter table).

``openai`` and ``openai-compatible`` send OpenAI's API as it is (``bridge``); ``azure-openai``
only moves the model into the URL (or not) and the key into ``api-key`` (``azure``);
``anthropic`` translates chat completions to the Messages API and back (``anthropic``).
"""

from __future__ import annotations

from .anthropic import Anthropic
from .azure import AzureOpenAI
from .bridge import Bridge
from .conversion import Conversion


class OpenAICompatible(Bridge):
    """A vendor's OpenAI-compatible API: chat completions, not the Responses API."""

    serves_responses = False


BRIDGES: dict[str, Bridge] = {
    "openai": Bridge(),
    "openai-compatible": OpenAICompatible(),
    "azure-openai": AzureOpenAI(),
    "anthropic": Anthropic(),
}


def bridge_for(adapter: str) -> Bridge:
    """The bridge of ``adapter`` (the config allows only adapters that have one)."""
    return BRIDGES[adapter]


_CONVERSIONS = {(adapter, speaks): Conversion(bridge, speaks) for adapter, bridge in BRIDGES.items()
                for speaks in ("openai", "responses", "anthropic")}  # fmt: skip


def conversion_for(adapter: str, speaks: str) -> Conversion:
    """``adapter``'s bridge as a caller speaking ``speaks`` (``openai``, ``responses``: OpenAI's
    Responses API, ``anthropic``) sees it."""
    return _CONVERSIONS[(adapter, speaks)]


__all__ = ["BRIDGES", "Bridge", "Conversion", "bridge_for", "conversion_for"]
