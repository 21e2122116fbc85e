"""The bridge every adapter is: OpenAI's API, sent and answered as it is."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..config.resources import Model, ProviderKey
from ..errors import InvalidRequest
from .urls import endpoint_url


class Bridge:
    """OpenAI's API, as it is: the default every other bridge changes parts of."""

    speaks = "openai"  # the API its upstream takes
    serves_responses = True  # and OpenAI's Responses API besides chat completions
    translates = False  # requests, answers and events are OpenAI's: sent and relayed as they are

    def url(self, key: ProviderKey, path: str, upstream_model: str) -> str:
        """Where the operation whose OpenAI path is ``path`` is sent."""
        return endpoint_url(key.api_base, path)

    def credentials(self, key: ProviderKey) -> dict[str, str]:
        """The headers that carry the provider key."""
        return {"Authorization": f"Bearer {key.api_key}"}

    def body(self, body: dict[str, Any], upstream_model: str, model: Model) -> dict[str, Any]:
        """The JSON body sent for the caller's (already checked) OpenAI ``body``."""
        return {**body, "model": upstream_model}

    def refusal(self, body: dict[str, Any], upstream_model: str, model: Model) -> InvalidRequest | None:
        """Why ``body`` cannot be sent through this bridge (None: it can), before anything is spent."""
        try:
            self.body(body, upstream_model, model)
        except InvalidRequest as refused:
            return refused
        return None

    def answer(self, status: int, document: Any, alias: str) -> Any:
        """The upstream's JSON answer as OpenAI's (this one: unchanged; ``None`` means the bytes
        pass on as they came)."""
        return None

    def events(self, events: Iterable[Any], alias: str) -> Iterator[Any]:
        """The upstream's server-sent events as OpenAI's (this one: as they come; anything that
        is not an event's bytes, the relay's keep-alive marker, passes as it is)."""
        return iter(events)
