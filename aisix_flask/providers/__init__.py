"""How each adapter (a provider key's protocol bridge) speaks to its upstream: where a request goes,
with which credential headers, what its body becomes, and what the upstream's answers and events
become for the caller, who always speaks OpenAI's API (README, the adapter table).

``openai`` and ``openai-compatible`` send OpenAI's API as it is; ``azure-openai`` only moves the
model into the URL (or not) and the key into ``api-key``; ``anthropic`` translates chat
completions to the Messages API and back (``providers.anthropic``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..config.resources import Model, ProviderKey
from .urls import endpoint_url


class Bridge:
    """OpenAI's API, as it is: the default every other bridge changes parts of."""

    def url(self, key: ProviderKey, path: str, upstream_model: str) -> str:
        """Where the operation whose OpenAI path is ``path`` is sent."""
        return endpoint_url(key.api_base, path)

    def credentials(self, key: ProviderKey) -> dict[str, str]:
        """The headers that carry the provider key."""
        return {"Authorization": f"Bearer {key.api_key}"}

    def body(self, body: dict[str, Any], upstream_model: str, model: Model) -> dict[str, Any]:
        """The JSON body sent for the caller's (already checked) OpenAI ``body``."""
        return {**body, "model": upstream_model}

    def answer(self, status: int, document: Any, alias: str) -> Any:
        """The upstream's JSON answer as OpenAI's (this one: unchanged; ``None`` means the bytes
        pass on as they came)."""
        return None

    def events(self, events: Iterable[bytes], alias: str, usage_asked: bool) -> Iterator[bytes]:
        """The upstream's server-sent events as OpenAI's (this one: as they come)."""
        return iter(events)


class AzureOpenAI(Bridge):
    """An Azure OpenAI resource: OpenAI's bodies and answers, its own URLs and key header.

    With ``api_version`` on the provider key, the deployment URLs
    (``{api_base}/openai/deployments/{model_name}/chat/completions?api-version=…``); without, the
    v1 API (``{api_base}/openai/v1/chat/completions``, the model in the body).
    """

    def url(self, key: ProviderKey, path: str, upstream_model: str) -> str:
        base = (key.api_base or "").rstrip("/").removesuffix("/openai/v1").removesuffix("/openai")
        if key.api_version:
            return f"{base}/openai/deployments/{upstream_model}{path}?api-version={key.api_version}"
        return f"{base}/openai/v1{path}"

    def credentials(self, key: ProviderKey) -> dict[str, str]:
        return {"api-key": key.api_key}


BRIDGES: dict[str, Bridge] = {
    "openai": Bridge(),
    "openai-compatible": Bridge(),
    "azure-openai": AzureOpenAI(),
}


def bridge_for(adapter: str) -> Bridge:
    """The bridge of ``adapter`` (the config allows only adapters that have one)."""
    return BRIDGES[adapter]
