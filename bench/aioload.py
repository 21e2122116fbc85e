"""A small asyncio load generator: N connections kept busy for a while, each sending one POST after
another and reading every answer to its end; ``--stream`` reads server-sent events.

Raw asyncio streams over HTTP/1.1 keep-alive (no dependency), to 127.0.0.1 only. Each connection
sends requests until ``seconds`` have passed and then waits for its last answer; a request that is
not answered within ``timeout`` seconds fails, and whatever is still running ``timeout`` + 5 s after
the end is cancelled and counted as failed, so every run stops by itself.

A streamed answer counts as completed only with status 200, a ``data: [DONE]`` event and no error
event (``data: {"error"``); connection errors, timeouts and any other status are failures. Figures:
completed, failed (with the reasons), p50/p99 of the whole answer and, for streams, of the first
event, in ms, timed from sending the request; and the p99 of the whole answer without each
connection's first request (every connection sends its first at once: that burst is the opening).

    .venv/bin/python bench/aioload.py URL --body '{"model": "chat-prod", ...}' --connections 1000 \\
        --seconds 12 [--stream] [--key KEY]

prints the figures as one JSON object (bench/run.py runs it so to keep a load going on another core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_READ_BYTES = 256 * 1024
_GRACE_S = 5.0


class Events:
    """The server-sent events of one answer, fed as its body arrives: did it end cleanly?"""

    def __init__(self) -> None:
        self._pending = b""
        self.first_at: float | None = None  # perf_counter when the first data event was complete
        self.done = False  # saw data: [DONE]
        self.error = ""  # the first error event's data

    def feed(self, data: bytes, now: float) -> None:
        """Take the next bytes of the body; ``now`` is when they arrived."""
        *events, self._pending = _EVENT_END.split(self._pending + data)
        for event in events:
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue  # a comment (": keep-alive"), an id, an event name
                payload = line[5:].strip()
                if self.first_at is None:
                    self.first_at = now
                if payload == b"[DONE]":
                    self.done = True
                elif payload.startswith(b'{"error"') and not self.error:
                    self.error = payload[:300].decode("utf-8", "replace")

    def verdict(self) -> str:
        """'' for a stream that ended cleanly, else why it did not."""
        if self.error:
            return f"error event {self.error}"
        return "" if self.done else "no data: [DONE]"


@dataclass
class Outcome:
    """One request: '' or what went wrong, how long the whole answer took, and its first event;
    ``opening``: the first request on its connection (they all start at once)."""

    failure: str
    seconds: float
    first_event_s: float | None = None
    opening: bool = False
    at: float = 0.0  # when it ended, seconds from the start of the run


class Client:
    """One keep-alive connection to ``host``:``port`` sending the same request again and again."""

    def __init__(self, host: str, port: int, head: bytes, body: bytes, stream: bool) -> None:
        self.host, self.port, self.head, self.body, self.stream = host, port, head, body, stream
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self) -> Outcome:
        """Send once and read the answer to its end. A failure is never retried (a retry would
        hide a gateway that drops connections), so, as HTTP clients do, a kept-alive connection
        the server has closed meanwhile is replaced before sending, not after."""
        started = time.perf_counter()
        if self.writer is not None and (self.reader.at_eof() or self.writer.is_closing()):
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        reader, writer = self.reader, self.writer
        writer.write(self.head)
        writer.write(self.body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        version, status = status_line.split(b" ", 2)[:2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            if name:
                headers[name.strip().lower()] = value.strip().lower()
        events = Events() if self.stream else None
        async for data in self._body(headers):
            if events is not None:
                events.feed(data, time.perf_counter())
        ended = time.perf_counter()
        framed = b"transfer-encoding" in headers or b"content-length" in headers
        if not (framed and version == b"HTTP/1.1" and headers.get(b"connection") != b"close"):
            self.close()
        first = events.first_at - started if events is not None and events.first_at is not None else None
        failed = int(status) != 200 if self.stream else int(status) >= 400
        if failed:
            return Outcome(f"HTTP {int(status)}", ended - started, first)
        return Outcome(events.verdict() if events is not None else "", ended - started, first)

    async def _body(self, headers: dict[bytes, bytes]) -> AsyncIterator[bytes]:
        """The answer's body as it arrives: chunked, Content-Length or up to the close."""
        reader = self.reader
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                yield (await reader.readexactly(size + 2))[:-2]
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                pass
        elif b"content-length" in headers:
            left = int(headers[b"content-length"])
            while left:
                data = await reader.read(min(left, _READ_BYTES))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                yield data
        else:
            while data := await reader.read(_READ_BYTES):
                yield data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (nan when there are none)."""
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)] if values else math.nan


def request_head(url: str, length: int, content_type: str, stream: bool, key: str | None) -> bytes:
    """The head of a POST of ``length`` bytes to ``url``, which must be on 127.0.0.1."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"{url}: the benchmark sends traffic to 127.0.0.1 only")
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Accept: text/event-stream" if stream else "Accept: */*",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode()


async def load(
    url: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    content_type: str = "application/json",
    stream: bool = False,
    timeout: float = 60.0,
    max_requests: int | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Keep ``connections`` requests to ``url`` in flight for ``seconds``; the figures (ms)."""
    parts = urlsplit(url)
    head_bytes = request_head(url, len(body), content_type, stream, key)
    outcomes: list[Outcome] = []
    sent = 0
    started = time.perf_counter()
    stop_at = started + seconds

    async def connection() -> None:
        nonlocal sent
        client = Client(parts.hostname or "127.0.0.1", parts.port or 80, head_bytes, body, stream)
        try:
            opening = True
            while time.perf_counter() < stop_at and (max_requests is None or sent < max_requests):
                sent += 1
                outcome = await attempt(client, timeout)
                outcome.opening, opening = opening, False
                outcome.at = time.perf_counter() - started
                outcomes.append(outcome)
        finally:
            client.close()

    tasks = [asyncio.create_task(connection()) for _ in range(connections)]
    running = await wait_for(tasks, seconds + timeout + _GRACE_S)
    result = figures(outcomes, running, time.perf_counter() - started)
    after = sorted(o.seconds * 1000 for o in outcomes if not o.failure and not o.opening)
    result["p99_after_opening"] = percentile(after, 99)  # each connection's first request left out
    result["failed_at_s"] = sorted(o.at for o in outcomes if o.failure)[:1000]  # from the run's start
    return result


async def attempt(client: Client, timeout: float) -> Outcome:
    """One request on ``client``, answered within ``timeout`` seconds or failed: a failure is an
    Outcome saying what went wrong (and the connection is closed), never an exception."""
    began = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            return await client.request()
    except TimeoutError:
        failure = f"no answer within {timeout:g} s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        failure = f"{type(e).__name__}: {e}"[:200]
    client.close()
    return Outcome(failure, time.perf_counter() - began)


async def wait_for(tasks: Iterable[asyncio.Task[None]], seconds: float) -> set[asyncio.Task[None]]:
    """Wait up to ``seconds`` for ``tasks``; cancel those still running (not reached unless a
    request ignored its timeout) and return them."""
    tasks = set(tasks)
    running: set[asyncio.Task[None]] = set()
    if tasks:
        _, running = await asyncio.wait(tasks, timeout=seconds)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return running


def figures(outcomes: list[Outcome], running: set[asyncio.Task[None]], elapsed: float) -> dict[str, Any]:
    """What a run's ``outcomes`` come to (ms): completed, failed (with the reasons, the requests
    cancelled at the end included), throughput, p50/p99 of the whole answer and of the first event."""
    failures = Counter(o.failure for o in outcomes if o.failure)
    failures.update({"still running at the end": len(running)} if running else {})
    good = [o for o in outcomes if not o.failure]
    whole = sorted(o.seconds * 1000 for o in good)
    first = sorted(o.first_event_s * 1000 for o in good if o.first_event_s is not None)
    return {
        "completed": len(good),
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common(5)),
        "rps": len(good) / elapsed,
        "seconds": elapsed,
        "p50": percentile(whole, 50),
        "p99": percentile(whole, 99),
        "first_p50": percentile(first, 50),
        "first_p99": percentile(first, 99),
    }


def run(url: str, body: bytes, **options: Any) -> dict[str, Any]:
    """``load`` from synchronous code: a fresh event loop for the run."""
    return asyncio.run(load(url, body, **options))


def command_line(doc: str, run: Callable[..., dict[str, Any]], add_options: Callable[[Any], None]) -> None:
    """A load generator's command line: the URL, the body and the options both generators take,
    then ``add_options``' own (named as ``run``'s keywords); prints the figures as one JSON object."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="the request body (JSON text)")
    parser.add_argument("--stream", action="store_true", help="the answers are server-sent events")
    parser.add_argument("--timeout", type=float, default=60, help="seconds a request may take")
    parser.add_argument("--key", help="sent as Authorization: Bearer KEY")
    add_options(parser)
    options = vars(parser.parse_args())
    url, body = options.pop("url"), options.pop("body").encode()
    print(json.dumps(run(url, body, **options)))


def main() -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--connections", type=int, default=1)
        parser.add_argument("--seconds", type=float, default=5)
        parser.add_argument("--max-requests", type=int, default=None)

    command_line(__doc__, run, options)


if __name__ == "__main__":
    main()
