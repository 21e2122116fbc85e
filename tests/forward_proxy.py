"""A small forward HTTP proxy on loopback, for the outbound-proxy tests.

Plain http:// requests arrive in absolute form (``POST http://host:port/path``) and are
forwarded. With ``credentials`` set it answers 407 unless ``Proxy-Authorization`` carries them.
``seen`` lists the targets it carried.
"""

from __future__ import annotations

import base64
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class ForwardProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, credentials: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.credentials = credentials
        self.seen: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> ForwardProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _authorized(self) -> bool:
        if self.server.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(self.server.credentials.encode()).decode()
        if self.headers.get("Proxy-Authorization") == expected:
            return True
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_POST(self) -> None:
        if not self._authorized():
            return
        target = urlsplit(self.path)
        self.server.seen.append(f"{target.hostname}:{target.port}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("proxy-authorization", "proxy-connection")
        }
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        upstream.request("POST", target.path or "/", body=body, headers=headers)
        answer = upstream.getresponse()
        payload = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        upstream.close()
