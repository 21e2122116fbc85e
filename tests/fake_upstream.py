"""A loopback fake of OpenAI's API, for the integration tests and the benchmarks: images here,
chat (whole and streamed), embeddings and rerank in ``fake_text``.

``gpt-image-*`` models answer ``b64_json`` items with token usage; other models answer URLs.
A prompt may steer it: ``[status:503]`` answers that status (``[status:429]`` with
``Retry-After: 7``), ``[sleep:1.5]`` waits first, ``[redirect]`` answers 302, ``[html]`` a 200 page
that is not JSON, ``[reset]`` drops the connection halfway through the body, ``[trickle:3]``
sends the body a byte at a time over 3 s, ``[poison]`` answers 400 with an error code no database
can store as is (a lone surrogate and a NUL), ``[huge-usage]`` reports more tokens than fit in 64 bits.
``steer`` (an attribute) steers every request as if its prompt began with it: two fakes answer the
same request differently (routing's tests).
``GET /_calls`` lists what it received (headers and body); ``DELETE /_calls`` forgets it.
Run alone: ``python -m tests.fake_upstream --port 8090``.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import fake_text

_STATUS = re.compile(r"\[status:(\d{3})\]")
_SLEEP = re.compile(r"\[sleep:([\d.]+)\]")
PNG_1PX = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
).decode()


class FakeOpenAI(ThreadingHTTPServer):
    """The server; ``calls`` holds every request it received."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        super().__init__(address, _Handler)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.steer = ""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a load tool hanging up mid-connection is not news

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
        """Serve in a daemon thread."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


def answer_for(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """What OpenAI would say to ``body`` (steered by markers in the prompt)."""
    prompt = str(body.get("prompt", ""))
    if m := _SLEEP.search(prompt):
        time.sleep(float(m.group(1)))
    if "[poison]" in prompt:
        error = {"message": "poison", "type": "x\x00" * 100, "param": None, "code": "\ud800\x00"}
        return 400, {"error": error}
    if m := _STATUS.search(prompt):
        status = int(m.group(1))
        error = {
            "message": f"fake upstream error {status}",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        return status, {"error": error}
    n = body.get("n") or 1
    if "[huge-usage]" in prompt:
        usage = {"input_tokens": 10**30, "output_tokens": 10**30, "total_tokens": 10**31}
        return 200, {"created": 1, "data": [{"url": "https://images.example/0.png"}], "usage": usage}
    if str(body.get("model", "")).startswith("gpt-image"):
        data = [{"b64_json": PNG_1PX} for _ in range(n)]
        usage = {
            "input_tokens": 12,
            "output_tokens": 272 * n,
            "total_tokens": 12 + 272 * n,
            "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
        }
        return 200, {"created": int(time.time()), "data": data, "usage": usage}
    data = [{"url": f"https://images.example/{i}.png", "revised_prompt": prompt} for i in range(n)]
    return 200, {"created": int(time.time()), "data": data}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the second waits for a delayed ACK.
    disable_nagle_algorithm = True
    server: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _fault(self, prompt: str) -> bool:
        """Misbehave as the prompt asks; True when the answer has been given (or withheld)."""
        if "[redirect]" in prompt:
            self.send_response(302)
            self.send_header("Location", "https://elsewhere.example/v1/images/generations")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif "[html]" in prompt:
            page = b"<html><body>Sign in to the proxy</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif "[reset]" in prompt:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"created": 1, "data": [{"b64_json": "')
            self.wfile.flush()
            # SO_LINGER 0: close with a TCP reset instead of a clean end of stream.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif m := re.search(r"\[trickle:([\d.]+)\]", prompt):
            body = json.dumps({"created": 1, "data": [{"url": "https://images.example/slow.png"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            pause = float(m.group(1)) / len(body)
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(pause)
            except OSError:
                pass  # the gateway gave up on us, as it should
            self.close_connection = True
        else:
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/_calls":
            with self.server.lock:
                self._send(200, self.server.calls)
        elif m := re.fullmatch(r"/v1/responses/([^/?]+)(/input_items)?(\?.*)?", self.path):
            self._stored(m.group(1), "GET", m.group(2))
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_DELETE(self) -> None:
        if m := re.fullmatch(r"/v1/responses/([^/?]+)", self.path):
            return self._stored(m.group(1), "DELETE", None)
        with self.server.lock:
            self.server.calls.clear()
        self._send(200, {})

    def _stored(self, response_id: str, method: str, items: str | None) -> None:
        """A stored response (every Responses answer is one, as OpenAI stores them by default)."""
        with self.server.lock:
            self.server.calls.append({"path": self.path, "method": method, "headers": dict(self.headers)})
        if response_id != "resp_fake":
            return self._send(404, {"error": {"message": f"No response with id '{response_id}' found.",
                                              "type": "invalid_request_error", "code": None}})  # fmt: skip
        if method == "DELETE":
            return self._send(200, {"id": response_id, "object": "response.deleted", "deleted": True})
        if items:
            item = {
                "type": "message",
                "id": "msg_in",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
            page = {
                "object": "list",
                "data": [item],
                "first_id": "msg_in",
                "last_id": "msg_in",
                "has_more": False,
            }
            return self._send(200, page)
        self._send(200, fake_text.response({"model": "gpt-4o"}, "hi"))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = fake_text.read_parts(self, raw)
        body = json.loads(raw) if parts is None else fake_text.form_body(parts)
        if parts is not None and body.get("stream") == "true":
            body["stream"] = True
        call = {
            "path": self.path,
            "headers": dict(self.headers),
            "body": body,
            "at": time.time(),
            "parts": parts,
            "port": self.client_address[1],  # the connection it came on
        }
        with self.server.lock:
            self.server.calls.append(call)
        if self.server.steer and self.path.endswith(("/images/generations", "/images/edits")):
            body = {**body, "prompt": self.server.steer + str(body.get("prompt", ""))}
        if self.path.endswith("/images/generations"):
            if body.get("stream") is True:
                fake_text.stream_images(self, body, call, "image_generation")
                return
            if self._fault(str(body.get("prompt", ""))):
                return
            status, document = answer_for(body)
            self._send(status, document, {"Retry-After": "7"} if status == 429 else None)
        elif self.path.endswith("/images/edits"):
            if body.get("stream") is True:
                partials = int(body.get("partial_images") or 0)
                fake_text.stream_images(self, {**body, "partial_images": partials}, call, "image_edit")
                return
            if self._fault(str(body.get("prompt", ""))):
                return
            status, document = answer_for({**body, "n": int(body.get("n") or 1)})
            self._send(status, document, {"Retry-After": "7"} if status == 429 else None)
        elif self.path.endswith(("/chat/completions", "/embeddings", "/rerank")):
            self._text(body, call)
        elif self.path.endswith("/responses"):
            text = self.server.steer + fake_text.response_text(body)
            if (status := fake_text.error_status(text)) is not None:
                self._send(
                    status, {"error": {"message": f"fake upstream error {status}", "type": "server_error"}}
                )
            elif body.get("stream") is True:
                fake_text.stream_response(self, body, text)
            else:
                self._send(200, fake_text.response(body, text))
        else:
            self._send(404, {"error": {"message": "not found"}})

    def _text(self, body: dict[str, Any], call: dict[str, Any]) -> None:
        text = self.server.steer + fake_text.steering(body, self.path)
        if (pause := fake_text.number(text, "sleep")) is not None:
            time.sleep(pause)
        if (status := fake_text.error_status(text)) is not None:
            self._send(
                status,
                {"error": {"message": f"fake upstream error {status}", "type": "server_error"}},
                {"Retry-After": "7"} if status == 429 else None,
            )
        elif self.path.endswith("/embeddings"):
            self._send(200, fake_text.embeddings(body))
        elif self.path.endswith("/rerank"):
            self._send(200, fake_text.rerank(body))
        elif body.get("stream") is True and "[json]" not in text:
            fake_text.stream_chat(self, body, text, call)
        else:
            self._send(200, fake_text.chat_completion(body, text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    server = FakeOpenAI(("127.0.0.1", args.port))
    print(f"fake OpenAI upstream on {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
