"""An upstream's server-sent events, one complete event at a time, as they arrive.

The events are read straight from the upstream's socket rather than through http.client, whose
chunked reader blocks in ``readline`` until the next chunk: the wait must instead be interleaved
with what a stream owes its caller meanwhile (docs/contract.md, "Streaming"):

- while the upstream is silent, a keep-alive comment every ``keepalive_s``;
- silence longer than the model's timeout ends the stream (``Silent``);
- a caller that hangs up is noticed at once, not at the next write (``CallerGone``);
- a worker told to stop ends its streams before its grace period runs out (``ShuttingDown``).
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from ..workers.readiness import Readiness, readiness
from .framing import Body
from .stream_cuts import CallerGone, Interrupted, ShuttingDown, Silent

KEEPALIVE = b": keep-alive\n\n"
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_READ_SIZE = 65536
# An event larger than this (a blank line never came) ends the stream: 1536x1024 PNG partial images
# are a few MB of base64.
MAX_EVENT_BYTES = 64 * 1024 * 1024
# After a clean end, how long to wait for the rest of the body (the last chunk's terminator) so
# that the connection can be reused.
DRAIN_S = 0.2


class UpstreamEvents:
    """Iterate over an open streaming response: each item is one whole event (its bytes as sent,
    blank line included), or ``KEEPALIVE`` when it is time to tell the caller the stream lives."""

    def __init__(
        self,
        response: requests.Response,
        *,
        silence_s: float,
        keepalive_s: float,
        caller: socket.socket | None = None,
        stop_by: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._response = response
        self._silence_s = silence_s
        self._keepalive_s = keepalive_s
        # The caller's socket is watched for a hang-up by peeking at it, which TLS does not allow
        # (gunicorn serving TLS itself): there a hang-up is noticed at the next write instead.
        self._caller = None if isinstance(caller, ssl.SSLSocket) else caller
        self._stop_by = stop_by
        raw: Any = response.raw  # urllib3's, over http.client's: their private parts are read here
        buffer = raw._fp.fp  # http.client's BufferedReader over the upstream's socket
        # Its SocketIO's socket: there even when http.client gave the connection up to the response
        # (an upstream that answers "Connection: close" or HTTP/1.0).
        self._sock: socket.socket = buffer.raw._sock
        self._body = Body(response.headers)
        self._raw = _take_buffered(buffer, self._sock)
        now = time.monotonic()
        self._silent_until = now + silence_s  # moved on by every byte that arrives
        self._keepalive_at = now + keepalive_s  # moved on by every byte, and by every keep-alive
        self._watch: Readiness | None = None
        self._events = bytearray()  # what arrived of the body and is not yet an event given out

    def more_ready(self) -> bool:
        """Whether the next event has already arrived whole (taking it will not wait)."""
        return _EVENT_END.search(self._events) is not None or (self._body.done and bool(self._events.strip()))

    def __iter__(self) -> Iterator[bytes]:
        events = self._events
        while True:
            events += self._body.feed(self._raw)
            self._raw = b""
            while match := _EVENT_END.search(events):
                event = bytes(events[: match.end()])
                del events[: match.end()]
                yield event
            if len(events) > MAX_EVENT_BYTES:
                raise Interrupted(f"the upstream sent an event of more than {MAX_EVENT_BYTES} bytes")
            if self._body.done:
                if events.strip():  # a last event without its blank line
                    yield bytes(events) + b"\n\n"
                return
            data = self._next_bytes()
            if data is None:
                yield KEEPALIVE
            elif not data:
                if self._body.ends_at_close:
                    self._body.done = True
                else:
                    raise Interrupted("the upstream closed the connection before the end of the stream")
            else:
                self._raw = data

    def close(self, finished: bool = False) -> None:
        """Give the connection back to the pool when the body was read to its end (a new stream
        then skips a connect, and a TLS handshake); else close it (the provider stops generating).

        ``finished``: the stream ended cleanly, and what may remain of the body (the last chunk's
        terminator, after chat's [DONE]) is worth a moment's wait, not more."""
        if self._watch is not None:
            self._watch.close()
        if finished and not self._body.done:
            self._drain(DRAIN_S)
        raw: Any = self._response.raw
        if self._body.whole and not raw._fp.will_close:
            raw._fp.close()  # http.client's side of it: the socket stays with the connection
            raw.release_conn()
        else:
            self._response.close()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        watch = select.poll()  # not select(): descriptors above 1,024 are common under load
        watch.register(self._sock, select.POLLIN)
        try:
            while not self._body.done and (left := deadline - time.monotonic()) > 0:
                if not self._pending() and not watch.poll(left * 1000):
                    return
                self._sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = self._sock.recv(_READ_SIZE)
                if not data:
                    return
                if self._body.feed(data):
                    self._body.done = False  # more events after the end: not a body to reuse
                    return
        except OSError:
            return

    def _pending(self) -> bool:
        return isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0

    def _next_bytes(self) -> bytes | None:
        """What the upstream sends next (b"" when it closed), or None when a keep-alive is due."""
        silent_until, keepalive_at = self._silent_until, self._keepalive_at
        if self._watch is None:  # made once per stream: a stream waits a dozen times
            self._watch = readiness([self._sock] + ([self._caller] if self._caller is not None else []))
        watch = self._watch
        while not (isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()):
            stop_by = self._stop_by()
            wake_at = min(silent_until, keepalive_at, stop_by if stop_by is not None else silent_until)
            ready = watch.wait(wake_at - time.monotonic())
            if self._sock.fileno() in ready:
                break
            if self._caller is not None and self._caller.fileno() in ready and self._caller_left(watch):
                raise CallerGone("the caller hung up")
            now = time.monotonic()
            if stop_by is not None and now >= stop_by:
                raise ShuttingDown("the gateway is shutting down")
            if now >= silent_until:
                raise Silent(f"the upstream sent nothing for {self._silence_s:g} s")
            if now >= keepalive_at:
                self._keepalive_at = now + self._keepalive_s
                return None
        try:
            self._sock.settimeout(max(0.001, silent_until - time.monotonic()))
            data = self._sock.recv(_READ_SIZE)
        except TimeoutError:
            raise Silent(f"the upstream sent nothing for {self._silence_s:g} s") from None
        except OSError as e:
            raise Interrupted(f"the connection to the upstream failed: {e}") from None
        now = time.monotonic()
        self._silent_until, self._keepalive_at = now + self._silence_s, now + self._keepalive_s
        return data

    def _caller_left(self, watch: Readiness) -> bool:
        """Whether the caller's connection is closed; bytes it sent (a pipelined request) are left
        for the server, and the caller is no longer watched."""
        caller = self._caller
        if caller is None:
            return False
        try:
            gone = caller.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not gone:
            watch.forget(caller)
            self._caller = None
        return gone


def _take_buffered(buffer: Any, sock: socket.socket) -> bytes:
    """The body bytes http.client read ahead with the headers (in its buffer, not the socket)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)  # peek must not wait for bytes that have not arrived
    try:
        ahead = buffer.peek(_READ_SIZE)
    except (BlockingIOError, ssl.SSLWantReadError):
        ahead = b""
    finally:
        sock.settimeout(timeout)
    return buffer.read(len(ahead)) if ahead else b""


class TranslatedEvents:
    """An upstream's events as its bridge translates them; closed as the upstream's are."""

    def __init__(self, upstream: UpstreamEvents, translated: Iterator[Any]) -> None:
        self._upstream, self._translated = upstream, translated

    def __iter__(self) -> Iterator[Any]:
        return self._translated

    def more_ready(self) -> bool:
        """(A translation may hold events back: each is written as it comes.)"""
        return False

    def close(self, finished: bool = False) -> None:
        self._upstream.close(finished)
