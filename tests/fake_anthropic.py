"""Loopback fakes of Anthropic's Messages API and of an Azure OpenAI resource, for the adapter tests.

Both check every request against the documented shapes and answer 400 (in their provider's
envelope) naming what is wrong, so a translation that sends a field Anthropic does not take, two
user turns in a row or an ``Authorization`` header fails its test. ``calls`` keeps what they
received (path, headers, body).

The Anthropic fake's answer is steered by the last user turn's text: ``[tool]`` asks for a
``get_weather`` tool call (a turn carrying a tool result is answered in text), ``[think]`` adds a
thinking block, ``[status:529]`` answers that status, and for streams ``[error-event]`` sends an
error event after the first delta and ``[cut]`` closes the connection there.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import fake_text

ANTHROPIC_KEY = "sk-ant-fake-SECRET-91c4"
AZURE_KEY = "azure-fake-SECRET-5d20"
TOP_LEVEL = {"model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
             "top_k", "metadata", "stream", "tools", "tool_choice"}  # fmt: skip
BLOCKS = {
    "user": {"text", "image", "tool_result"},
    "assistant": {"text", "tool_use", "thinking"},
}
USAGE = {
    "input_tokens": 21,
    "output_tokens": 9,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 30,
}


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def problems(headers: Any, body: Any) -> list[str]:
    """What is wrong with a Messages request, as Anthropic's API documents it."""
    found = []
    if headers.get("x-api-key") != ANTHROPIC_KEY:
        found.append("x-api-key: missing or wrong")
    if headers.get("anthropic-version") != "2023-06-01":
        found.append("anthropic-version: must be 2023-06-01")
    if headers.get("Authorization") is not None:
        found.append("Authorization: not Anthropic's header")
    if not isinstance(body, dict):
        return [*found, "body: not a JSON object"]
    found += [f"{field}: Extra inputs are not permitted" for field in body if field not in TOP_LEVEL]
    if not isinstance(body.get("model"), str):
        found.append("model: required")
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        found.append("max_tokens: required")
    system = body.get("system")
    if system is not None and not (isinstance(system, str) or all(b.get("type") == "text" for b in system)):
        found.append("system: text blocks only")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*found, "messages: a non-empty list"]
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in BLOCKS:
            found.append(f"messages.{i}.role: user or assistant")
            continue
        if i and messages[i - 1].get("role") == role:
            found.append(f"messages.{i}: roles must alternate")
        content = message.get("content")
        if not content:
            found.append(f"messages.{i}.content: must not be empty")
        if isinstance(content, str):
            continue
        for j, block in enumerate(content or []):
            kind, where = block.get("type"), f"messages.{i}.content.{j}"
            if kind not in BLOCKS[role]:
                found.append(f"{where}.type: {kind!r} not allowed for {role}")
            elif kind == "text" and not block.get("text"):
                found.append(f"{where}.text: must not be empty")
            elif kind == "image" and block.get("source", {}).get("type") not in ("base64", "url"):
                found.append(f"{where}.source: base64 or url")
            elif kind == "tool_use" and not (isinstance(block.get("input"), dict) and block.get("id")):
                found.append(f"{where}: a tool_use needs an id and an object input")
    if messages[0].get("role") != "user":
        found.append("messages.0.role: the first message must be a user turn")
    if "tool_choice" in body and "tools" not in body and body["tool_choice"].get("type") != "none":
        found.append("tool_choice: only with tools")
    if (
        body.get("tool_choice", {}).get("type") == "none"
        and "disable_parallel_tool_use" in body["tool_choice"]
    ):
        found.append("tool_choice.disable_parallel_tool_use: not with none")
    for i, tool in enumerate(body.get("tools") or []):
        if set(tool) - {"name", "description", "input_schema"} or "input_schema" not in tool:
            found.append(f"tools.{i}: name, description, input_schema")
    return found


def _last_text(body: dict[str, Any]) -> tuple[str, bool]:
    """The last user turn's text, and whether it carries a tool result."""
    content = body["messages"][-1].get("content")
    if isinstance(content, str):
        return content, False
    text = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    return text, any(b.get("type") == "tool_result" for b in content)


class _Anthropic(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, document: Any) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": message}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self.server.lock:
            self.server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/v1/messages/count_tokens" and isinstance(body, dict):
            if self.headers.get("x-api-key") != ANTHROPIC_KEY:
                return self._error(401, "authentication_error", "invalid x-api-key")
            return self._send(200, {"input_tokens": 7 * len(body.get("messages") or [])})
        if self.path != "/v1/messages":
            return self._error(404, "not_found_error", f"no route {self.path}")
        found = problems(self.headers, body)
        if found:
            return self._error(400, "invalid_request_error", "; ".join(found))
        text, tool_result = _last_text(body)
        if m := re.search(r"\[status:(\d{3})\]", text):
            kind = {529: "overloaded_error", 429: "rate_limit_error"}.get(int(m.group(1)), "api_error")
            return self._error(int(m.group(1)), kind, f"fake {kind}")
        blocks = _blocks(text, tool_result)
        if body.get("stream"):
            return self._stream(body, text, blocks)
        stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        self._send(
            200,
            {"id": "msg_fake01", "type": "message", "role": "assistant", "model": body["model"],
             "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": USAGE},
        )  # fmt: skip

    def _stream(self, body: dict[str, Any], text: str, blocks: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(kind: str, document: dict[str, Any]) -> None:
            data = f"event: {kind}\ndata: {json.dumps({'type': kind, **document})}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        message = {"id": "msg_fake02", "type": "message", "role": "assistant", "model": body["model"],
                   "content": [], "usage": {**USAGE, "output_tokens": 1}}  # fmt: skip
        event("message_start", {"message": message})
        event("ping", {})
        for index, block in enumerate(blocks):
            if block["type"] == "tool_use":
                event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
                arguments = json.dumps(block["input"])
                for start in range(0, len(arguments), 8):
                    delta = {"type": "input_json_delta", "partial_json": arguments[start : start + 8]}
                    event("content_block_delta", {"index": index, "delta": delta})
            else:
                kind, field = ("thinking", "thinking") if block["type"] == "thinking" else ("text", "text")
                event("content_block_start", {"index": index, "content_block": {"type": kind, field: ""}})
                for word_number, word in enumerate(block[field].split(" ")):
                    piece = word if word_number == 0 else " " + word
                    event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": f"{kind}_delta", field: piece}},
                    )
                    if "[error-event]" in text:
                        event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                        return self._end()
                    if "[cut]" in text:
                        self.close_connection = True
                        return
            event("content_block_stop", {"index": index})
        stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        event(
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 9}},
        )
        event("message_stop", {})
        self._end()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _blocks(text: str, tool_result: bool) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if "[think]" in text:
        blocks.append({"type": "thinking", "thinking": "Let me think about it.", "signature": "sig"})
    if "[tool]" in text and not tool_result:
        blocks.append({"type": "text", "text": "Checking the weather."})
        blocks.append(
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
        )
    else:
        blocks.append(
            {"type": "text", "text": "It is sunny in Paris." if tool_result else "Hello from Claude"}
        )
    return blocks


class _Azure(BaseHTTPRequestHandler):
    """An Azure OpenAI resource: deployment URLs with ?api-version=, or the v1 API."""

    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        url = urlsplit(self.path)
        with self.server.lock:
            self.server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        deployment = re.fullmatch(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)", url.path)
        v1 = re.fullmatch(r"/openai/v1/(chat/completions|embeddings)", url.path)
        if self.headers.get("api-key") != AZURE_KEY or self.headers.get("Authorization"):
            return self._send(401, {"error": {"code": "401", "message": "Access denied due to invalid key."}})
        if deployment and not parse_qs(url.query).get("api-version"):
            return self._send(404, {"error": {"code": "404", "message": "Resource not found"}})
        if not (deployment or v1):
            return self._send(404, {"error": {"code": "404", "message": "Resource not found"}})
        operation = (deployment or v1).group(deployment and 2 or 1)  # type: ignore[union-attr]
        text = fake_text.steering(body, "/" + operation)
        if "[content-filter]" in text:
            error = {"message": "The response was filtered", "type": None, "param": "prompt",
                     "code": "content_filter", "status": 400}  # fmt: skip
            return self._send(400, {"error": error})
        if operation == "embeddings":
            return self._send(200, fake_text.embeddings(body))
        if body.get("stream") is True:
            return fake_text.stream_chat(self, body, text, {})
        self._send(200, fake_text.chat_completion(body, text))

    def _send(self, status: int, document: Any) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def anthropic() -> FakeServer:
    return FakeServer(_Anthropic).start()


def azure() -> FakeServer:
    return FakeServer(_Azure).start()
