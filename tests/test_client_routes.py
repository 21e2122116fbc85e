"""Every route through the real gunicorn, driven by the official openai client (list, retrieve,
create, stream) and curl-like requests (raw HTTP on the wire: tests/test_sse_wire.py)."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import requests

from .integration import ADMIN_KEY, DEV_KEY
from .text_routes import fake_calls, rows, settled_rows


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=DEV_KEY, max_retries=0) as c:
        yield c


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


def test_many_streams_at_once(gateway):
    """Twenty concurrent streams each get every word, in order, and one row each."""
    before = len(settled_rows(gateway, "/v1/chat/completions"))
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
