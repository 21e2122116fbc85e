"""A chat completion stream read chunk by chunk into another API's events: what the translations
of ``anthropic.inbound`` and ``responses`` share."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol


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
