"""Every route through the real gunicorn, driven by the official openai client (list, retrieve,
create, stream), curl-like requests and raw HTTP for the SSE framing."""

from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest
import requests

from .serving import Gunicorn
from .test_integration import ADMIN_KEY, DEV_KEY, ENV, gateway_config

TEXT_MODELS = """
  - {display_name: chat-prod, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main}
  - {display_name: quick-chat, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main,
     timeout_s: 1.5}
  - {display_name: deepseek-chat, provider: deepseek, model_name: deepseek-chat, provider_key: deepseek}
  - {display_name: embed, provider: openai, model_name: text-embedding-3-small, provider_key: openai-main}
  - {display_name: reranker, provider: jina, model_name: jina-reranker-v2, provider_key: jina}
"""


def text_config(tmp_path, fake, keepalive_s: float = 0.3):
    """The integration config, with chat, embeddings and rerank models and an output guardrail."""
    path = gateway_config(tmp_path, fake)
    text = path.read_text().replace("models:\n", "models:\n" + TEXT_MODELS.lstrip("\n"), 1)
    jina = f'  - {{display_name: jina, provider: jina, api_key: jk, api_base: "{fake.url}"}}\n'
    text = text.replace("provider_keys:\n", "provider_keys:\n" + jina, 1)
    text = text.replace("gateway:\n", f"gateway:\n  stream_keepalive_s: {keepalive_s}\n", 1)
    text += """  - name: no-launch-codes
    kind: keyword
    hook_point: output
    patterns: [{kind: literal, value: launch code}]
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake):
    server = Gunicorn(text_config(tmp_path_factory.mktemp("routes"), fake), workers=2, threads=16, env=ENV)
    yield server
    assert server.stop() == 0


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=DEV_KEY, max_retries=0) as c:
        yield c


def rows(gateway, route: str) -> list[dict]:
    r = requests.get(
        f"{gateway.url}/admin/v1/usage", params={"limit": 1000}, headers={"x-api-key": ADMIN_KEY}
    )
    return [row for row in r.json()["data"] if row["route"] == route]


def fake_calls(fake, path: str) -> list[dict]:
    calls = requests.get(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5).json()
    return [c for c in calls if c["path"].endswith(path)]


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == sorted(ids) and {"chat-prod", "embed", "reranker", "image-prod"} <= set(ids)
    model = client.models.retrieve("deepseek-chat")
    assert (model.id, model.owned_by, model.object) == ("deepseek-chat", "deepseek", "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_completion(client, gateway):
    done = client.chat.completions.create(
        model="chat-prod",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "[say:hello there]"},
        ],
    )
    assert done.choices[0].message.content == "hello there"
    assert done.usage.total_tokens == 12


def test_chat_stream_with_the_official_client(client, gateway, fake):
    stream = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "[say:one two three]"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert all(c.choices for c in chunks)  # the usage chunk the gateway asked for is not there
    time.sleep(0.5)  # the row is queued when the stream ends
    row = rows(gateway, "/v1/chat/completions")[0]
    assert (row["model"], row["status"], row["total_tokens"]) == ("deepseek-chat", 200, 13)


def test_chat_stream_with_usage_asked_for(client):
    chunks = list(
        client.chat.completions.create(
            model="chat-prod",
            messages=[{"role": "user", "content": "[say:a b]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12


@pytest.mark.parametrize("fault", ["[cut:2]", "[reset:2]", "[no-done]"])
def test_a_cut_stream_raises_in_the_official_client(client, fault):
    stream = client.chat.completions.create(
        model="chat-prod", messages=[{"role": "user", "content": f"{fault}[say:a b c d]"}], stream=True
    )
    with pytest.raises(openai.APIError, match="stopped before the end"):
        for _ in stream:
            pass


def test_a_silent_stream_raises_after_the_models_timeout(client):
    stream = client.chat.completions.create(
        model="quick-chat", messages=[{"role": "user", "content": "[silent:1][say:a b]"}], stream=True
    )
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="sent nothing"):
        for _ in stream:
            pass
    assert 1.4 < time.monotonic() - started < 5


def test_an_output_guardrail_stops_a_stream(client):
    stream = client.chat.completions.create(
        model="chat-prod", messages=[{"role": "user", "content": "[say:the launch code is 42]"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="no-launch-codes"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "code" not in "".join(seen)


def test_embeddings(client):
    one = client.embeddings.create(model="embed", input="a cat")
    assert len(one.data) == 1 and one.usage.prompt_tokens == 7
    many = client.embeddings.create(model="embed", input=["a", "b", "c"])
    assert [d.index for d in many.data] == [0, 1, 2]
    tokens = client.embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2


def test_rerank_with_the_official_clients_generic_post(client):
    """The README's way: the client has no rerank method."""
    answer = client.post(
        "/rerank", cast_to=object, body={"model": "reranker", "query": "q", "documents": ["a", "b"]}
    )
    assert [r["index"] for r in answer["results"]] == [0, 1]


def test_rerank_with_curl_like_requests(gateway, fake):
    r = requests.post(
        f"{gateway.url}/v1/rerank",
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": "reranker", "query": "cats", "documents": ["dogs", {"text": "cats"}], "top_n": 1},
        timeout=30,
    )
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    sent = fake_calls(fake, "/rerank")[-1]
    assert sent["body"]["model"] == "jina-reranker-v2" and sent["body"]["top_n"] == 1
    r = requests.post(
        f"{gateway.url}/v1/rerank",
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": "chat-prod", "query": "q", "documents": ["d"]},
        timeout=30,
    )
    assert r.status_code == 501 and r.json()["error"]["code"] == "unsupported_operation"


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


def test_many_streams_at_once(gateway):
    """Twenty concurrent streams each get every word, in order, and one row each."""
    before = len(rows(gateway, "/v1/chat/completions"))
    results: list[str] = []

    def one(i: int) -> None:
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=DEV_KEY, max_retries=0) as c:
            stream = c.chat.completions.create(
                model="chat-prod",
                messages=[{"role": "user", "content": f"[gap:0.05][say:s{i} a b c]"}],
                stream=True,
            )
            results.append("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(f"s{i} a b c" for i in range(20))
    time.sleep(0.5)
    assert len(rows(gateway, "/v1/chat/completions")) == before + 20


def test_metrics_and_the_report_split_by_route(gateway, client):
    client.embeddings.create(model="embed", input="x")
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'route="/v1/embeddings"' in text and 'route="/v1/chat/completions"' in text
    summary = requests.get(
        f"{gateway.url}/admin/v1/usage/summary", params={"by": "route"}, headers={"x-api-key": ADMIN_KEY}
    ).json()
    routes = {row["route"] for row in summary["data"]}
    assert {"/v1/embeddings", "/v1/chat/completions"} <= routes


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


def test_image_stream_with_the_official_client(client, gateway):
    """OpenAI's own streaming sample: partial images, then the image."""
    stream = client.images.generate(model="image-prod", prompt="A river", stream=True, partial_images=2)
    kinds = [(event.type, getattr(event, "partial_image_index", None)) for event in stream]
    assert kinds == [
        ("image_generation.partial_image", 0),
        ("image_generation.partial_image", 1),
        ("image_generation.completed", None),
    ]
    time.sleep(0.5)
    row = rows(gateway, "/v1/images/generations")[0]
    assert (row["status"], row["images"], row["total_tokens"]) == (200, 1, 284)


def test_a_cut_image_stream_raises_in_the_official_client(client):
    stream = client.images.generate(
        model="image-prod", prompt="[cut:1] A river", stream=True, partial_images=3
    )
    with pytest.raises(openai.APIError, match="stopped before the end"):
        for _ in stream:
            pass


def _png(seed: int) -> tuple[str, bytes, str]:
    import hashlib as _h

    return (f"img{seed}.png", _h.sha256(str(seed).encode()).digest() * 512, "image/png")


@pytest.mark.parametrize(
    ("images", "mask"),
    [([_png(1)], None), ([_png(1), _png(2)], None), ([_png(3)], ("mask.png", b"m" * 999, "image/png"))],
)
def test_image_edits_with_the_official_client(client, gateway, fake, images, mask):
    import hashlib as _h

    extra = {"mask": mask} if mask else {}
    answer = client.images.edit(model="image-prod", image=images if len(images) > 1 else images[0],
                                prompt="add a hat", **extra)  # fmt: skip
    assert answer.data[0].b64_json and answer.usage.total_tokens == 284
    parts = fake_calls(fake, "/images/edits")[-1]["parts"]
    files = [(p["name"], p["filename"], p["sha256"]) for p in parts if p["filename"]]
    expected = [
        ("image[]" if len(images) > 1 else "image", f, _h.sha256(d).hexdigest()) for f, d, _ in images
    ]
    if mask:
        expected.append(("mask", mask[0], _h.sha256(mask[1]).hexdigest()))
    assert files == expected
    assert {p["name"]: p.get("text") for p in parts}["model"] == "gpt-image-1"


def test_a_streamed_image_edit_with_the_official_client(client):
    stream = client.images.edit(model="image-prod", image=_png(4), prompt="p", stream=True, partial_images=1)
    assert [event.type for event in stream] == ["image_edit.partial_image", "image_edit.completed"]


def test_a_caller_that_stops_reading_frees_its_thread(gateway, fake):
    """Its window fills and the server's write would wait for ever: after the model's timeout
    (quick-chat: 1.5 s) the write fails, the upstream is closed and the row is written."""
    before = len(rows(gateway, "/v1/chat/completions"))
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
