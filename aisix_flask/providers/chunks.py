"""What the translations of a chat completion into another API (``anthropic.inbound``,
``responses``) share: its first choice, a malformed one reported as a bad response, and its
stream read chunk by chunk into the other API's events."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from ..errors import UpstreamBadResponse

T = TypeVar("T")


def first_choice(completion: Any) -> dict[str, Any]:
    """A chat completion's first choice (UpstreamBadResponse when it is not a chat completion)."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        raise UpstreamBadResponse("The upstream answered HTTP 2xx with a body that is not a chat completion.")
    return choices[0]


def translated(make: Callable[[Any, str], T], completion: Any, alias: str) -> T:
    """``make(completion, alias)``, a malformed completion (a field of the wrong type) reported as
    a bad response rather than a failure of the gateway's."""
    try:
        return make(completion, alias)
    except (AttributeError, TypeError, ValueError):
        raise UpstreamBadResponse(
            "The upstream answered HTTP 2xx with a malformed chat completion."
        ) from None


class ChunkReader(Protocol):
    """What a translation makes of each chunk (its JSON), and of the stream's ``[DONE]``."""

    def take(self, chunk: dict[str, Any]) -> Iterator[bytes]: ...

    def end(self) -> Iterator[bytes]: ...


def event_data(event: bytes) -> bytes:
    """A server-sent event's data: its ``data:`` lines joined (empty when it has none)."""
    return b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))


def read_chunks(chunks: Iterable[Any], reader: ChunkReader) -> Iterator[Any]:
    """``reader``'s events for a chat completion stream (each item one whole event's bytes);
    anything else (the relay's keep-alive marker) passes as it is. A stream cut before ``[DONE]``
    never gets the reader's end: the relay reports the cut."""
    for chunk in chunks:
        if not isinstance(chunk, bytes):
            yield chunk
            continue
        data = event_data(chunk)
        if data == b"[DONE]":
            yield from reader.end()
            continue
        try:
            document = json.loads(data) if data else None
        except ValueError:
            document = None
        if isinstance(document, dict):
            yield from reader.take(document)
