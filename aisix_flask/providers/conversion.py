"""What a request in the caller's API becomes through a provider key's bridge, and what the
upstream's answers and events become for the caller.

The caller speaks OpenAI's API (every OpenAI route), its Responses API (``/v1/responses``) or
Anthropic's (``/v1/messages``); a bridge speaks its provider's. The same API on both sides is sent
as it is, ``model`` rewritten; an OpenAI caller through the anthropic bridge gets the bridge's
translation; an Anthropic caller through a bridge that speaks OpenAI's API gets the translation
run the other way (``anthropic.inbound``); a Responses caller through a bridge without the
Responses API gets chat completions (``responses``), then the bridge's own translation if any.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..config.resources import Model, ProviderKey
from ..errors import InvalidRequest
from . import responses
from .anthropic import inbound, inbound_events
from .bridge import Bridge


class Conversion:
    """A bridge as a caller speaking ``speaks`` sees it."""

    def __init__(self, bridge: Bridge, speaks: str) -> None:
        self.bridge = bridge
        self.speaks = speaks
        # nothing to translate
        self.native = bridge.speaks == speaks or (speaks == "responses" and bridge.serves_responses)
        self.translates = not self.native and (bridge.translates or speaks != "openai")

    def url(self, key: ProviderKey, path: str, native_path: str | None, upstream_model: str) -> str:
        """Where the request goes: the provider's own path for its own API, else the route's."""
        return self.bridge.url(key, native_path if self.native and native_path else path, upstream_model)

    def body(self, body: dict[str, Any], upstream_model: str, model: Model) -> dict[str, Any]:
        if self.native:
            return {**body, "model": upstream_model}
        if self.speaks == "anthropic":
            body = inbound.chat_request(body)
        elif self.speaks == "responses":
            body = responses.chat_request(body)
        return self.bridge.body(body, upstream_model, model)

    def refusal(self, body: dict[str, Any], upstream_model: str, model: Model) -> InvalidRequest | None:
        """Why ``body`` cannot be sent this way (None: it can), before anything is spent."""
        try:
            self.body(body, upstream_model, model)
        except InvalidRequest as refused:
            return refused
        return None

    def answer(self, status: int, document: Any, alias: str) -> Any:
        """The upstream's JSON answer in the caller's API (None: the bytes pass on as they came)."""
        if self.native:
            return None
        translated = self.bridge.answer(status, document, alias)
        if self.speaks == "openai":
            return translated
        document = document if translated is None else translated
        if self.speaks == "responses":  # (errors are OpenAI's already)
            return responses.response(document, alias) if 200 <= status < 300 else translated
        if 200 <= status < 300:
            return inbound.message(document, alias)
        return inbound.anthropic_error(document, status)

    def events(self, events: Iterable[Any], alias: str) -> Iterator[Any]:
        """The upstream's events in the caller's API."""
        if self.native:
            return iter(events)
        chunks = self.bridge.events(events, alias)
        if self.speaks == "anthropic":
            return inbound_events.events(chunks, alias)
        if self.speaks == "responses":
            return responses.events(chunks, alias)
        return chunks
