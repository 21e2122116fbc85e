"""Anthropic's Messages API behind the chat completions route (README, the adapter table): the
request translated (``request``), the answer and errors (``answer``) and the stream's events
(``events``) translated back, each by pure functions over JSON values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ...config.resources import Model, ProviderKey
from ..bridge import Bridge
from .answer import completion, openai_error
from .events import chunks
from .request import messages_request

API_BASE = "https://api.anthropic.com"
VERSION = "2023-06-01"


class Anthropic(Bridge):
    """Anthropic's Messages API behind the chat completions route."""

    speaks = "anthropic"
    serves_responses = False
    translates = True

    def url(self, key: ProviderKey, path: str, upstream_model: str) -> str:
        """``/v1/messages`` (an OpenAI route's path, chat's, is translated to it), or one of
        Anthropic's own paths under it (``/v1/messages/count_tokens``)."""
        base = (key.api_base or API_BASE).rstrip("/").removesuffix("/v1/messages").removesuffix("/v1")
        return f"{base}{path if path.startswith('/v1/messages') else '/v1/messages'}"

    def credentials(self, key: ProviderKey) -> dict[str, str]:
        return {"x-api-key": key.api_key, "anthropic-version": VERSION}

    def body(self, body: dict[str, Any], upstream_model: str, model: Model) -> dict[str, Any]:
        return messages_request(body, upstream_model, model)

    def answer(self, status: int, document: Any, alias: str) -> Any:
        if 200 <= status < 300:
            return completion(document, alias) if isinstance(document, dict) else None
        return openai_error(document)

    def events(self, events: Iterable[Any], alias: str) -> Iterator[Any]:
        return chunks(events, alias)
