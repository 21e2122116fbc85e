"""A fast loopback fake of OpenAI's image and chat APIs for benchmarks (asyncio, HTTP/1.1 keep-alive).

- ``POST …/images/edits``: the multipart body is read to its end and dropped (only its last bytes
  are looked at: a body cut short is a 400), then a gpt-image-1 answer: one small ``b64_json``
  image and ``usage``.
- ``POST …/chat/completions``: a chat completion with ``usage``; with ``"stream": true`` server-sent
  events as OpenAI sends them (``text/event-stream``, HTTP/1.1 chunks, one event a chunk): the role
  chunk at once, then a content chunk every 0.3 s (7 of them, ~2 s), the finish chunk, a usage-only
  chunk when ``stream_options.include_usage`` is true, then ``data: [DONE]``. The last message's
  text steers it: ``[gap:0.05]`` seconds between content chunks, ``[chunks:3]`` content chunks.
- ``POST /v1/messages``: Anthropic's Messages API, whole or streamed, steered as chat is.
- Anything else (``/images/generations``): the prompt steers it: ``[sleep:5]`` answers after 5 s,
  ``[b64:8mb]`` answers one ``b64_json`` image of that size (``kb`` or ``mb``); anything else gets
  a small URL answer with ``usage`` at once.

A request body may come with a Content-Length or chunked. Run: ``python bench/fake_upstream.py --port 8091``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import time
from typing import Any

_SLEEP = re.compile(rb"\[sleep:([\d.]+)\]")
_B64 = re.compile(rb"\[b64:(\d+)(kb|mb)\]")
_GAP = re.compile(r"\[gap:([\d.]+)\]")
_CHUNKS = re.compile(r"\[chunks:(\d+)\]")
_READ_BYTES = 256 * 1024
# A gpt-image-1 answer: one image and the token usage (the gateway counts it against tpm).
SMALL = json.dumps(
    {
        "created": 1710000000,
        "data": [{"url": "https://images.example/0.png"}],
        "usage": {
            "input_tokens": 12,
            "output_tokens": 272,
            "total_tokens": 284,
            "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
        },
    }
).encode()
# A 1×1 PNG: the edit's answer is kept small so that the run measures the upload.
PNG_1PX = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
).decode()
EDITED = json.dumps(
    {
        "created": 1710000000,
        "data": [{"b64_json": PNG_1PX}],
        "usage": {
            "input_tokens": 800,
            "output_tokens": 272,
            "total_tokens": 1072,
            "input_tokens_details": {"text_tokens": 24, "image_tokens": 776},
        },
    }
).encode()
_large: dict[int, bytes] = {}


def large(size: int) -> bytes:
    """A b64_json answer whose image string is ``size`` bytes long (made once per size)."""
    if size not in _large:
        image = base64.b64encode(bytes(range(256)) * (size * 3 // 4 // 256 + 1))[:size].decode()
        _large[size] = json.dumps({"created": 1, "data": [{"b64_json": image}]}).encode()
    return _large[size]


def answer(writer: asyncio.StreamWriter, payload: bytes, status: str = "200 OK") -> None:
    """Queue a whole JSON answer (the caller drains); two writes, so a 32 MB payload is not copied."""
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    writer.write(head.encode())
    writer.write(payload)


async def read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes], keep: bool = True) -> bytes:
    """The request body (Content-Length or chunked); with ``keep`` False it is read in pieces and
    dropped, and only its last 64 bytes are returned."""
    kept = bytearray()

    async def take(left: int) -> None:
        while left:
            data = await reader.read(min(left, _READ_BYTES))
            if not data:
                raise asyncio.IncompleteReadError(bytes(kept), left)
            kept.extend(data)
            if not keep:
                del kept[:-64]
            left -= len(data)

    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await take(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
            pass
        return bytes(kept)
    left = int(headers.get(b"content-length", b"0"))
    if keep:
        return await reader.readexactly(left) if left else b""
    await take(left)
    return bytes(kept)


def _chunk_event(model: Any, delta: dict[str, Any], finish: str | None, include_usage: bool) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:  # OpenAI then adds "usage": null to every chunk but the usage-only one
        chunk["usage"] = None
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def chat(writer: asyncio.StreamWriter, body: bytes) -> None:
    """A chat completion, whole or as server-sent events in HTTP/1.1 chunks."""
    request = json.loads(body)
    model = request.get("model")
    messages = request.get("messages") or [{}]
    text = str(messages[-1].get("content", "")) if isinstance(messages[-1], dict) else ""
    usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    if request.get("stream") is not True:
        message = {"role": "assistant", "content": "one two three four five six seven"}
        document = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        }
        answer(writer, json.dumps(document).encode())
        await writer.drain()
        return
    gap = float(m.group(1)) if (m := _GAP.search(text)) else 0.3
    count = int(m.group(1)) if (m := _CHUNKS.search(text)) else 7
    include_usage = (request.get("stream_options") or {}).get("include_usage") is True
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        + _http_chunk(_chunk_event(model, {"role": "assistant", "content": ""}, None, include_usage))
    )
    await writer.drain()
    for i in range(count):
        await asyncio.sleep(gap)
        writer.write(_http_chunk(_chunk_event(model, {"content": f"word{i} "}, None, include_usage)))
        await writer.drain()
    end = _http_chunk(_chunk_event(model, {}, "stop", include_usage))
    if include_usage:
        only = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "system_fingerprint": "fp_bench", "choices": [],
                "usage": {**usage, "completion_tokens": count, "total_tokens": 12 + count}}  # fmt: skip
        end += _http_chunk(b"data: " + json.dumps(only, separators=(",", ":")).encode() + b"\n\n")
    writer.write(end + _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


def _anthropic_event(kind: str, document: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **document}, separators=(",", ":"))
    return _http_chunk(f"event: {kind}\ndata: {data}\n\n".encode())


async def messages(writer: asyncio.StreamWriter, body: bytes) -> None:
    """An Anthropic Messages answer, whole or as its server-sent events, the text as chat's."""
    request = json.loads(body)
    model = request.get("model")
    text = json.dumps(request.get("messages") or [])
    usage = {"input_tokens": 12, "output_tokens": 7}
    if request.get("stream") is not True:
        document = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": "one two three four five six seven"}],
                    "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}  # fmt: skip
        answer(writer, json.dumps(document).encode())
        await writer.drain()
        return
    gap = float(m.group(1)) if (m := _GAP.search(text)) else 0.3
    count = int(m.group(1)) if (m := _CHUNKS.search(text)) else 7
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model, "content": [],
               "usage": {**usage, "output_tokens": 1}}  # fmt: skip
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        + _anthropic_event("message_start", {"message": message})
        + _anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    )
    await writer.drain()
    for i in range(count):
        await asyncio.sleep(gap)
        delta = {"index": 0, "delta": {"type": "text_delta", "text": f"word{i} "}}
        writer.write(_anthropic_event("content_block_delta", delta))
        await writer.drain()
    writer.write(
        _anthropic_event("content_block_stop", {"index": 0})
        + _anthropic_event(
            "message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": count}}
        )
        + _anthropic_event("message_stop", {})
        + b"0\r\n\r\n"
    )
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.split(b"\r\n")
            target = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b"/"
            headers = {}
            for line in lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            path = target.split(b"?")[0]
            if path.endswith(b"/images/edits"):
                # Up to 16 images of several MB each: read and dropped, never held or parsed.
                tail = await read_body(reader, headers, keep=False)
                if tail.rstrip(b"\r\n").endswith(b"--"):
                    answer(writer, EDITED)
                else:
                    error = {"error": {"message": "multipart body cut short", "code": "invalid_multipart"}}
                    answer(writer, json.dumps(error).encode(), "400 Bad Request")
                await writer.drain()
                continue
            body = await read_body(reader, headers)
            if m := _SLEEP.search(body):
                await asyncio.sleep(float(m.group(1)))
            if path.endswith(b"/chat/completions"):
                await chat(writer, body)
                continue
            if path.endswith(b"/v1/messages"):
                await messages(writer, body)
                continue
            payload = SMALL
            if m := _B64.search(body):
                payload = large(int(m.group(1)) * (1024 if m.group(2) == b"kb" else 1024 * 1024))
            answer(writer, payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8091)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
