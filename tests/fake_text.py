"""The fake upstream's text routes: chat completions (whole or streamed), embeddings, rerank.

The last user message (chat), the first input (embeddings) or the query (rerank) may steer it:

- ``[say:some words]`` answers those words (else ``Hello from the fake upstream``); with ``[tool]``,
  as the arguments of a tool call (``lookup``) instead of content;
- ``[status:503]`` answers that status; ``[sleep:1.5]`` waits before answering;
- streams: ``[gap:0.3]`` waits that long before each chunk; ``[cut:2]`` closes the connection
  after 2 content chunks, without ``[DONE]``; ``[reset:2]`` resets it there; ``[silent:2]`` stops
  sending after 2 content chunks (and holds the connection); ``[no-done]`` ends the body cleanly
  but without ``[DONE]``; ``[json]`` answers a whole JSON completion despite ``stream: true``;
  ``[error-event]`` sends an error event after the first chunk.

Every streamed call is recorded with how it ended: ``done``, or ``caller_left`` (a write failed:
the gateway closed the connection) with the time it was noticed.
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import time
import zlib
from typing import Any

_SAY = re.compile(r"\[say:([^\]]*)\]")
_STATUS = re.compile(r"\[status:(\d{3})\]")


def steering(body: dict[str, Any], path: str) -> str:
    """The text that steers the answer to ``body``."""
    if path.endswith("/chat/completions"):
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                return message["content"]
        return ""
    if path.endswith("/embeddings"):
        value = body.get("input")
        return value if isinstance(value, str) else str(value[0] if value else "")
    return str(body.get("query", ""))


def words(text: str) -> list[str]:
    m = _SAY.search(text)
    return (m.group(1) if m else "Hello from the fake upstream").split()


def error_status(text: str) -> int | None:
    m = _STATUS.search(text)
    return int(m.group(1)) if m else None


def number(text: str, name: str) -> float | None:
    m = re.search(rf"\[{name}:([\d.]+)\]", text)
    return float(m.group(1)) if m else None


_TOOL_CALL = {"id": "call_fake", "type": "function", "function": {"name": "lookup", "arguments": ""}}


def chat_completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    content = " ".join(words(text))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if "[tool]" in text:
        call = {**_TOOL_CALL, "function": {"name": "lookup", "arguments": content}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": len(words(text)),
            "total_tokens": 10 + len(words(text)),
        },
    }


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("input")
    count = len(value) if isinstance(value, list) and not all(isinstance(v, int) for v in value) else 1
    data = [{"object": "embedding", "index": i, "embedding": [0.1 * i, -0.5, 0.25]} for i in range(count)]
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def rerank(body: dict[str, Any]) -> dict[str, Any]:
    documents = body.get("documents") or []
    results = [
        {"index": i, "relevance_score": round(1 - i / (len(documents) + 1), 3)} for i in range(len(documents))
    ]
    return {"model": body.get("model"), "results": results, "usage": {"total_tokens": 21}}


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **({"usage": usage} if usage is not None else {}),
    }


def _hold_silently(handler: Any, call: dict[str, Any], seconds: float) -> None:
    """Send nothing for ``seconds``, noticing at once when the gateway closes the connection."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([handler.connection], [], [], 0.05)
        if readable and handler.connection.recv(1, socket.MSG_PEEK) == b"":
            call["ended"], call["ended_at"] = "caller_left", time.time()
            handler.close_connection = True
            return


def stream_chat(handler: Any, body: dict[str, Any], text: str, call: dict[str, Any]) -> None:
    """Write a chat completion as server-sent events in HTTP/1.1 chunks, as OpenAI does."""
    include_usage = (body.get("stream_options") or {}).get("include_usage") is True
    gap = number(text, "gap") or 0.0
    cut, reset, silent = number(text, "cut"), number(text, "reset"), number(text, "silent")
    # [close]: "Connection: close" (chunked still); [http10]: no chunks, the body ends at the close;
    # [deflate]: raw deflate (no zlib header), as some servers send "deflate".
    chunked = "[http10]" not in text
    deflate = zlib.compressobj(wbits=-15) if "[deflate]" in text else None
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    if chunked:
        handler.send_header("Transfer-Encoding", "chunked")
    if not chunked or "[close]" in text:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    if deflate:
        handler.send_header("Content-Encoding", "deflate")
    handler.end_headers()

    def send(data: bytes) -> None:
        if deflate:
            data = deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        handler.wfile.flush()

    def event(document: Any) -> None:
        null_usage = {"usage": None} if include_usage else {}
        payload = (
            document
            if isinstance(document, str)
            else json.dumps({**document, **null_usage}, separators=(",", ":"))
        )
        send(f"data: {payload}\n\n".encode())

    try:
        tool = "[tool]" in text
        opening = {"content": None, "tool_calls": [{"index": 0, **_TOOL_CALL}]} if tool else {"content": ""}
        event(_chunk(body, {"role": "assistant", **opening}))
        said = ["x" * 16384] * int(number(text, "big")) if number(text, "big") else words(text)
        for i, word in enumerate(said):
            if gap:
                time.sleep(gap)
            piece = word + (" " if i < len(said) - 1 else "")
            delta = (
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                if tool
                else {"content": piece}
            )
            event(_chunk(body, delta))
            call["chunks_sent"] = i + 1
            if "[error-event]" in text:
                overloaded = {
                    "message": "The model is overloaded",
                    "type": "server_error",
                    "code": "overloaded",
                }
                send(b"data: " + json.dumps({"error": overloaded}).encode() + b"\n\n")
                handler.wfile.write(b"0\r\n\r\n")
                return
            if cut == i + 1:
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if reset == i + 1:
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                handler.connection.close()
                handler.close_connection = True
                return
            if silent == i + 1:
                _hold_silently(handler, call, 30)
                return
        event(_chunk(body, {}, finish="stop"))
        if include_usage:
            usage = {"prompt_tokens": 10, "completion_tokens": len(said), "total_tokens": 10 + len(said)}
            send(
                (
                    "data: "
                    + json.dumps({**_chunk(body, {}), "choices": [], "usage": usage}, separators=(",", ":"))
                    + "\n\n"
                ).encode()
            )
        if "[no-done]" not in text:
            event("[DONE]")
        if chunked:
            handler.wfile.write(b"0\r\n\r\n")
        call["ended"] = "done"
    except OSError:
        call["ended"] = "caller_left"  # the gateway closed the connection: nothing more is generated
        call["ended_at"] = time.time()
        handler.close_connection = True


def stream_images(handler: Any, body: dict[str, Any], call: dict[str, Any], kind: str) -> None:
    """An image stream as gpt-image models send it: ``partial_images`` partial images, then one
    completed event with usage; ``kind`` is ``image_generation`` or ``image_edit``. The prompt
    steers it like chat's (``[gap:]``, ``[cut:]`` after that many partials, ``[silent:]``)."""
    from .fake_upstream import PNG_1PX

    text = str(body.get("prompt", ""))
    partials = body.get("partial_images") or 0
    gap = number(text, "gap") or 0.0
    cut, silent = number(text, "cut"), number(text, "silent")
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def event(name: str, document: dict[str, Any]) -> None:
        data = f"event: {name}\ndata: {json.dumps(document)}\n\n".encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    common = {
        "created_at": 1,
        "size": "1024x1024",
        "quality": "low",
        "background": "opaque",
        "output_format": "png",
    }
    try:
        for i in range(int(partials)):
            if gap:
                time.sleep(gap)
            event(f"{kind}.partial_image", {"type": f"{kind}.partial_image", "b64_json": PNG_1PX,
                                             "partial_image_index": i, **common})  # fmt: skip
            call["chunks_sent"] = i + 1
            if cut == i + 1:
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if silent == i + 1:
                _hold_silently(handler, call, 30)
                return
        if gap:
            time.sleep(gap)
        usage = {"input_tokens": 12, "output_tokens": 272, "total_tokens": 284,
                 "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}}  # fmt: skip
        event(
            f"{kind}.completed", {"type": f"{kind}.completed", "b64_json": PNG_1PX, "usage": usage, **common}
        )
        handler.wfile.write(b"0\r\n\r\n")
        call["ended"] = "done"
    except OSError:
        call["ended"], call["ended_at"] = "caller_left", time.time()
        handler.close_connection = True


def read_parts(handler: Any, raw: bytes) -> list[dict[str, Any]] | None:
    """A multipart body's parts, as received: headers, size, SHA-256 (and the text of small ones)."""
    import hashlib

    from werkzeug.http import parse_options_header
    from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

    mimetype, options = parse_options_header(handler.headers.get("Content-Type", ""))
    if mimetype != "multipart/form-data":
        return None
    decoder = MultipartDecoder(options["boundary"].encode())
    decoder.receive_data(raw)
    decoder.receive_data(None)
    parts: list[dict[str, Any]] = []
    data: dict[int, bytearray] = {}
    while not isinstance(event := decoder.next_event(), NeedData | Epilogue):
        if isinstance(event, File | Field):
            parts.append({"name": event.name, "filename": getattr(event, "filename", None),
                          "headers": list(event.headers.items())})  # fmt: skip
            data[len(parts) - 1] = bytearray()
        elif isinstance(event, Data):
            data[len(parts) - 1] += event.data
    for i, part in enumerate(parts):
        part["size"], part["sha256"] = len(data[i]), hashlib.sha256(data[i]).hexdigest()
        if part["filename"] is None:
            part["text"] = data[i].decode()
    return parts


def form_body(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The text fields of a form, as the answer is steered by them."""
    return {p["name"]: p["text"] for p in parts if p["filename"] is None}


def response(body: dict[str, Any], text: str) -> dict[str, Any]:
    """A Responses API answer: one message item with the words, or a function call with [tool]."""
    content = " ".join(words(text))
    if "[tool]" in text:
        output = [{"type": "function_call", "id": "fc_fake", "call_id": "call_fake", "name": "lookup",
                   "arguments": content, "status": "completed"}]  # fmt: skip
    else:
        output = [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": content, "annotations": []}]}]  # fmt: skip
    count = len(words(text))
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": count,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10 + count}  # fmt: skip
    return {"id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": body.get("model"), "output": output, "usage": usage}  # fmt: skip


def response_text(body: dict[str, Any]) -> str:
    """The text that steers a Responses request: its string input, or its last item's text."""
    given = body.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given or []):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            return "[say:done]"
    return ""


def stream_response(handler: Any, body: dict[str, Any], text: str) -> None:
    """A Responses API stream: created, the text's deltas, completed (HTTP/1.1 chunks); with
    ``[error-event]``, an error event after the first delta instead."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    whole = response(body, text)
    number = iter(range(1000))

    def event(kind: str, **fields: Any) -> None:
        data = json.dumps({"type": kind, "sequence_number": next(number), **fields})
        chunk = f"event: {kind}\ndata: {data}\n\n".encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.flush()

    event("response.created", response={**whole, "status": "in_progress", "output": [], "usage": None})
    item = {**whole["output"][0], "status": "in_progress", "content": []}
    event("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    event("response.content_part.added", item_id="msg_fake", output_index=0, content_index=0, part=part)
    for i, word in enumerate(words(text)):
        delta = word if i == 0 else " " + word
        event("response.output_text.delta", item_id="msg_fake", output_index=0, content_index=0, delta=delta)
        if "[error-event]" in text:  # the Responses API's error event: its fields at the top
            event("error", code="server_error", message="The server had an error.", param=None)
            break
        if "[failed]" in text:
            error = {"code": "rate_limit_exceeded", "message": "Try again later."}
            event("response.failed", response={**whole, "status": "failed", "error": error})
            break
    else:
        done = whole["output"][0]
        text_done = done["content"][0]["text"]
        event(
            "response.output_text.done", item_id="msg_fake", output_index=0, content_index=0, text=text_done
        )
        event("response.content_part.done", item_id="msg_fake", output_index=0, content_index=0,
              part=done["content"][0])  # fmt: skip
        event("response.output_item.done", output_index=0, item=done)
        event("response.completed", response=whole)
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
