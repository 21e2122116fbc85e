"""What differs between the OpenAI routes the gateway forwards: one ``Operation`` per route.

Everything else (the request path, the upstream call, the bookkeeping) is shared: see
``pipeline.handle`` and docs/contract.md, "Every proxied route".
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema

from ..usage.row import UsageRow


@dataclass(frozen=True)
class Texts:
    """Where a route's guardrails read text in a body, and how masked text is put back."""

    read: Callable[[dict[str, Any]], list[str]]
    # The body with the texts replaced, in the order ``read`` gave them (never changes the input).
    write: Callable[[dict[str, Any], list[str]], dict[str, Any]]

    @classmethod
    def walked(cls, walk: Callable[[dict[str, Any], Callable[[str], str]], dict[str, Any]]) -> Texts:
        """Both from one walk: ``walk(body, replace)`` is the body with each text passed through
        ``replace``, always in the same order (reading keeps each text; writing puts one back)."""

        def read(body: dict[str, Any]) -> list[str]:
            texts: list[str] = []
            walk(body, lambda text: texts.append(text) or text)  # type: ignore[func-returns-value]
            return texts

        def write(body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
            replacements = iter(texts)
            return walk(body, lambda _: next(replacements))

        return cls(read, write)


@dataclass(frozen=True)
class Streaming:
    """How a route streams (``stream: true``): what it asks the upstream for, what its events say."""

    # The body to send, and whether the usage-only events in the answer are the gateway's own
    # request (chat's stream_options.include_usage), not to be relayed.
    prepare: Callable[[dict[str, Any]], tuple[dict[str, Any], bool]]
    note_event: Callable[[UsageRow, dict[str, Any]], None]  # usage (and images) from an event
    # The event (given its data and its JSON) that makes the stream complete. With ``last``, it is
    # the stream's last (chat's [DONE]): relaying stops there. Otherwise the stream is complete when
    # the upstream's body ends after at least one (an image stream's ``*.completed`` events).
    is_final: Callable[[str, Any], bool]
    last: bool = True
    is_usage_only: Callable[[dict[str, Any]], bool] = lambda event: False
    # An event's new answer text, each with what it continues (a choice's content, a tool call's
    # arguments…): the output guardrails read it with the end of what came before.
    text: Callable[[dict[str, Any]], list[tuple[Hashable, str]]] | None = None
    # The error an event reports for the upstream (None: none): its own error event ends the
    # stream as a failure, relayed (the Responses API's also ends with response.failed).
    upstream_error: Callable[[dict[str, Any]], Any] = lambda event: (
        event.get("error") or (event if event.get("type") == "error" else None)
    )


@dataclass(frozen=True)
class Operation:
    """One proxied route: its schema, its text, its provider rule, its upstream and its usage."""

    capability: str  # what the adapter must implement: "images", "chat", "embeddings", "rerank"
    route: str  # "/v1/chat/completions"
    upstream_path: str  # "/chat/completions"
    what: str  # how messages name it: "chat completions"
    schema: Schema  # the fields the gateway checks; unknown ones pass through
    texts: Texts  # what input guardrails read
    note_answer: Callable[[UsageRow, dict[str, Any]], None]  # usage (and images) from an answer
    providers: frozenset[str] | None = None  # images: {"openai"}; None: any provider
    output_text: Callable[[dict[str, Any]], list[str]] | None = None  # what output guardrails read
    streaming: Streaming | None = None  # None: ``stream: true`` is forwarded as any field
    form_schema: Schema | None = None  # the route also takes multipart/form-data, checked by this
    # The token kinds a ``per_million_tokens`` price must name for this route's answers to be
    # priced (any one of the sets): a budget refuses a request it could not count.
    token_kinds: tuple[tuple[str, ...], ...] = ()
    search_units: bool = False  # its answers may report search units (rerank)
    speaks: str = "openai"  # the API its callers speak: "openai", "responses" or "anthropic"
    native_path: str | None = None  # its path at a provider that speaks the same API
    # The id of what an answer (or one of its events) created at the provider, which later calls
    # name (a stored response): the call records who created it (``Call.note_created``).
    creates: Callable[[dict[str, Any]], str | None] | None = None
    # The caller's headers sent on to a provider that speaks the route's API (Anthropic's
    # anthropic-beta: the features a request asks for).
    forwards: tuple[str, ...] = ()
