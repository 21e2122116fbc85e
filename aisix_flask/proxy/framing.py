"""An upstream's response body as it arrives: its framing (chunked, a length, or until the
connection closes) and its content coding, undone incrementally for the stream relay (events.py)."""

from __future__ import annotations

import re
import zlib
from typing import Any

import requests

from .stream_cuts import Interrupted

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[^\r\n]*\r?\n")


class Body:
    """The response body's framing (chunked, a length, or until the connection closes) and
    content coding, undone incrementally: feed it raw bytes, get body bytes."""

    def __init__(self, headers: requests.structures.CaseInsensitiveDict[str]) -> None:
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        self.left = int(length) if not self.chunked and length and length.isdigit() else None
        self.ends_at_close = not self.chunked and self.left is None
        # An upstream may compress despite "identity": gzip, or deflate with or without its zlib
        # header (both are sent as "deflate"); the first bytes tell which.
        self._coding = headers.get("Content-Encoding", "identity").strip().lower()
        self._inflate: Any = None
        self._framed = bytearray()  # chunked bytes not yet decoded
        self._chunk_left = 0  # data bytes left in the current chunk
        self._trailers = False  # the last chunk was read; its trailer lines come
        self.done = self.left == 0

    def feed(self, raw: bytes) -> bytes:
        if self.chunked:
            data = self._dechunk(raw)
        elif self.left is not None:
            data = raw[: self.left]
            self.left -= len(data)
            self.done = self.left == 0
        else:
            data = raw
        if self._coding not in ("gzip", "deflate") or not data:
            return data
        if self._inflate is None:
            zlib_header = len(data) > 1 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflate = zlib.decompressobj(47 if self._coding == "gzip" or zlib_header else -15)
        try:
            inflated: bytes = self._inflate.decompress(data)
            return inflated
        except zlib.error as e:
            raise Interrupted(f"the upstream's {self._coding} stream is broken: {e}") from None

    def _dechunk(self, raw: bytes) -> bytes:
        self._framed += raw
        out = bytearray()
        while self._framed and not self.done:
            if self._trailers:  # after the last chunk: header lines, then an empty one
                end = self._framed.find(b"\n")
                if end < 0:
                    break
                line = bytes(self._framed[: end + 1])
                del self._framed[: end + 1]
                self.done = not line.strip()
                continue
            if self._chunk_left:
                take = self._framed[: self._chunk_left]
                out += take
                del self._framed[: len(take)]
                self._chunk_left -= len(take)
                continue
            if self._framed.startswith(b"\r\n"):  # the end of the previous chunk's data
                del self._framed[:2]
                continue
            match = _CHUNK_SIZE.match(self._framed)
            if match is None:
                if len(self._framed) > 1024 or b"\n" in self._framed:
                    raise Interrupted("the upstream's chunked framing is broken")
                break  # the size line has not all arrived
            self._chunk_left = int(match.group(1), 16)
            del self._framed[: match.end()]
            self._trailers = self._chunk_left == 0
        return bytes(out)

    @property
    def whole(self) -> bool:
        """Read to its very end and not a byte beyond: the connection can serve another request."""
        return self.done and not self.ends_at_close and not self._framed
