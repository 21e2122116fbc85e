"""Streams on the wire, through the real gunicorn: the SSE framing, keep-alives, a caller that hangs
up, half-closes or stops reading, and a SIGTERM during a stream."""

from __future__ import annotations

import json
import socket
import time

from .integration import DEV_KEY, ENV
from .serving import Gunicorn
from .text_routes import fake_calls, rows, settled_rows, text_config


def raw_stream(gateway, body: dict, receive_buffer: int | None = None) -> socket.socket:
    """Send a streamed chat request on a bare socket; return it, positioned after the headers."""
    payload = json.dumps(body).encode()
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {DEV_KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def read_until(sock: socket.socket, marker: bytes, seconds: float = 10) -> bytes:
    """What the socket sends until ``marker`` has arrived (headers and events come in any pieces)."""
    data = b""
    deadline = time.monotonic() + seconds
    while marker not in data and time.monotonic() < deadline:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


def test_sse_framing_on_the_wire(gateway):
    sock = raw_stream(
        gateway,
        {"model": "chat-prod", "messages": [{"role": "user", "content": "[say:x y]"}], "stream": True},
    )
    # The last chunk, after the one before it (see the half-close test below for why).
    data = read_until(sock, b"\r\n0\r\n\r\n")
    sock.close()
    assert data.endswith(b"\r\n0\r\n\r\n"), data
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"HTTP/1.1 200" in head and b"Transfer-Encoding: chunked" in head
    assert b"Content-Type: text/event-stream" in head and b"Cache-Control: no-cache" in head
    events = b"".join(part for i, part in enumerate(body.split(b"\r\n")) if i % 2)  # the chunks' data
    assert events.endswith(b"data: [DONE]\n\n")
    assert all(e.startswith(b"data: ") for e in events.split(b"\n\n") if e)


def test_keep_alives_while_the_upstream_is_silent(gateway):
    sock = raw_stream(
        gateway,
        {
            "model": "quick-chat",
            "messages": [{"role": "user", "content": "[silent:1][say:a b]"}],
            "stream": True,
        },
    )
    data = read_until(sock, b"upstream_timeout")
    sock.close()
    assert data.count(b": keep-alive\n\n") >= 3  # every 0.3 s for 1.5 s of silence
    assert b'"code": "upstream_timeout"' in data and b"[DONE]" not in data


def test_a_caller_that_hangs_up_stops_the_upstream_at_once(gateway, fake):
    """The upstream is silent; the gateway notices the hang-up on the caller's socket itself,
    not at its next write (keep-alives here every 0.3 s, so it would take longer without)."""
    sock = raw_stream(
        gateway,
        {
            "model": "chat-prod",
            "messages": [{"role": "user", "content": "[silent:1][say:hang up]"}],
            "stream": True,
        },
    )
    assert b"data: " in read_until(sock, b"data: ")
    sock.close()
    hung_up = time.time()
    time.sleep(1.0)
    call = fake_calls(fake, "/chat/completions")[-1]
    assert call["ended"] == "caller_left" and call["ended_at"] - hung_up < 0.25
    row = rows(gateway, "/v1/chat/completions")[0]
    assert (row["status"], row["error_code"]) == (499, "client_disconnected")


def test_sigterm_ends_a_long_stream_with_an_error_event_and_writes_its_row(tmp_path, fake):
    """A stopping worker waits for its calls, but a stream could outlast the grace period (then
    the worker is killed and its row lost): it ends the stream with an error event in time."""
    from sqlalchemy import create_engine, text

    server = Gunicorn(
        text_config(tmp_path, fake), workers=1, threads=4, env=ENV, args=("--graceful-timeout", "7")
    )
    try:
        long_answer = "[gap:0.3][say:" + "w " * 200 + "]"
        body = {"model": "chat-prod", "messages": [{"role": "user", "content": long_answer}], "stream": True}
        sock = raw_stream(server, body)
        assert b"data: " in read_until(sock, b"data: ")
        stopped = time.monotonic()
        server.process.send_signal(15)
        data = read_until(sock, b"gateway_shutting_down")
        ended_after = time.monotonic() - stopped
        sock.close()
    finally:
        server.stop()
    assert b'"code": "gateway_shutting_down"' in data and b"[DONE]" not in data
    assert 1.5 < ended_after < 4  # graceful_timeout 7 s less the 5 s margin
    assert server.process.wait(15) == 0
    engine = create_engine(f"sqlite:///{tmp_path}/usage.db")
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, error_code FROM usage WHERE route = '/v1/chat/completions'")
        ).one()
    engine.dispose()
    assert tuple(row) == (503, "gateway_shutting_down")


def test_a_caller_that_stops_reading_frees_its_thread(gateway, fake):
    """Its window fills and the server's write would wait for ever: after the model's timeout
    (quick-chat: 1.5 s) the write fails, the upstream is closed and the row is written."""
    before = len(settled_rows(gateway, "/v1/chat/completions"))
    big = {"model": "quick-chat", "messages": [{"role": "user", "content": "[big:2000]"}], "stream": True}
    sock = raw_stream(gateway, big, receive_buffer=4096)  # and never read
    deadline = time.monotonic() + 15
    while len(rows(gateway, "/v1/chat/completions")) == before and time.monotonic() < deadline:
        time.sleep(0.25)
    sock.close()
    row = rows(gateway, "/v1/chat/completions")[0]
    assert (row["status"], row["error_code"]) == (499, "client_disconnected")
    assert fake_calls(fake, "/chat/completions")[-1]["ended"] == "caller_left"


def test_a_caller_that_half_closes_gets_an_error_event_not_a_clean_end(gateway):
    """shutdown(SHUT_WR) looks like a hang-up on the wire; the caller may still be reading."""
    body = {
        "model": "chat-prod",
        "messages": [{"role": "user", "content": "[gap:0.3][say:a b c d]"}],
        "stream": True,
    }
    sock = raw_stream(gateway, body)
    sock.shutdown(socket.SHUT_WR)
    # The last chunk, after the one before it: "0\r\n\r\n" alone also ends the header block when
    # the request id ends in 0 (1 run in 16 stopped reading at the headers).
    data = read_until(sock, b"\r\n0\r\n\r\n")
    sock.close()
    assert b"client_disconnected" in data and b"[DONE]" not in data
