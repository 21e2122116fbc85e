"""Upstream outcomes: the table in docs/contract.md, each with its envelope and its ledger row."""

from __future__ import annotations

import pytest

from .conftest import UPSTREAM_KEY, assert_envelope, auth, expect_upstream

ROUTE = "/v1/images/generations"


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_upstream_4xx_is_passed_through(client, upstream, ledger_rows, status):
    raw = (
        b'{"error": {"message": "Your prompt was rejected.", "type": "invalid_request_error",'
        b' "param": null, "code": "content_policy_violation"}}'
    )
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p"}, status=status, body=raw, json=None)
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    assert (r.status_code, r.data) == (status, raw)
    [row] = ledger_rows()
    assert (row["status"], row["error_code"]) == (status, "content_policy_violation")


def test_upstream_429_keeps_retry_after(client, upstream, ledger_rows):
    raw = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    expect_upstream(
        upstream,
        {"model": "gpt-image-1", "prompt": "p"},
        status=429,
        answer=raw,
        headers={"Retry-After": "7"},
    )
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    assert (r.status_code, r.get_json(), r.headers["Retry-After"]) == (429, raw, "7")
    assert ledger_rows()[0]["error_code"] == "rate_limit_exceeded"


def test_upstream_4xx_that_is_not_json_becomes_an_envelope(client, upstream):
    expect_upstream(
        upstream, {"model": "gpt-image-1", "prompt": "p"}, status=404, body="<h1>Not Found</h1>", json=None
    )
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    error = assert_envelope(r, 404, "upstream_error", "upstream_404")
    assert "Not Found" in error["message"]


@pytest.mark.parametrize(
    ("answer", "status", "type_", "code"),
    [
        (
            {"status": 500, "json": {"error": {"message": "The server had an error"}}},
            502,
            "upstream_error",
            "upstream_server_error",
        ),
        ({"status": 503, "body": "upstream overloaded"}, 502, "upstream_error", "upstream_server_error"),
        (
            {
                "status": 401,
                "json": {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY[:8]}***"}},
            },
            502,
            "upstream_error",
            "upstream_auth_failed",
        ),
        (
            {"status": 403, "json": {"error": {"message": "Project does not have access"}}},
            502,
            "upstream_error",
            "upstream_auth_failed",
        ),
        (
            {"status": 302, "headers": {"Location": "https://elsewhere.test/"}, "body": ""},
            502,
            "upstream_error",
            "upstream_bad_response",
        ),
        (
            {"status": 200, "body": "<html>proxy login</html>", "content_type": "text/html"},
            502,
            "upstream_error",
            "upstream_bad_response",
        ),
        ({"status": 200, "json": [1, 2]}, 502, "upstream_error", "upstream_bad_response"),
    ],
)
def test_upstream_failures_map_to_gateway_errors(client, upstream, ledger_rows, answer, status, type_, code):
    answer.setdefault("json", None)
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p"}, **answer)
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    error = assert_envelope(r, status, type_, code)
    assert "Incorrect API key" not in error["message"]
    assert len(upstream.calls) == 1  # never retried: a generation is billed
    [row] = ledger_rows()
    assert (row["status"], row["error_code"], row["images"]) == (status, code, 0)


def test_upstream_5xx_message_is_kept_and_capped(client, upstream):
    expect_upstream(
        upstream,
        {"model": "gpt-image-1", "prompt": "p"},
        status=500,
        json={"error": {"message": "boom " * 1000}},
    )
    error = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"}).get_json()[
        "error"
    ]
    assert "boom" in error["message"] and len(error["message"]) < 1200


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        ("ReadTimeout", 504, "timeout", "upstream_timeout"),
        ("ConnectTimeout", 504, "timeout", "upstream_timeout"),
        ("ConnectionError", 502, "upstream_error", "upstream_unreachable"),
        ("ChunkedEncodingError", 502, "upstream_error", "upstream_unreachable"),
    ],
)
def test_upstream_transport_failures(client, upstream, ledger_rows, exc, status, type_, code):
    import requests

    expect_upstream(
        upstream,
        {"model": "gpt-image-1", "prompt": "p"},
        body=getattr(requests.exceptions, exc)("boom"),
        json=None,
    )
    r = client.post(ROUTE, headers=auth(), json={"model": "image-prod", "prompt": "p"})
    assert_envelope(r, status, type_, code)
    # Only a failure before anything was sent is tried again (gateway.upstream.retries: 1).
    tries = 2 if exc == "ConnectTimeout" else 1
    assert len(upstream.calls) == tries
    [row] = ledger_rows()
    assert (row["status"], row["error_code"], row["attempts"]) == (status, code, tries)


def test_a_gzip_answer_is_decoded():
    """Over a real socket: requests hands urllib3 decode_content=False, so the reader must ask
    for decoding itself (``responses`` decodes on its own and would not notice)."""
    import gzip
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from aisix_flask.proxy import upstream

    document = {"created": 1, "data": [{"url": "https://example.com/a.png"}]}
    body = gzip.compress(json.dumps(document).encode())

    class Gzipping(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            for name, value in (("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                ("Content-Length", str(len(body)))):  # fmt: skip
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Gzipping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/images/generations"
        credentials = {"Authorization": "Bearer sk-x"}
        answer = upstream.post(url, b"{}", credentials=credentials, request_id="r", timeout=(2, 5))
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(answer.content) == document
