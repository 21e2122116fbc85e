"""Every proxied route, once: a valid request for it, its upstream URL and what that answers. The
tests that must cover every route run over this table (tests/test_request_path.py, which checks that
the app serves exactly these routes, and tests/test_abuse.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .conftest import CHAT_URL, EMBEDDINGS_URL, IMAGES_URL, RERANK_URL, UPSTREAM_KEY


@dataclass(frozen=True)
class Case:
    """A route, a valid request for it, and what its upstream answers."""

    route: str
    upstream_url: str
    model: str  # an alias the route can serve
    upstream_model: str
    body: Callable[[str], dict[str, Any]]  # the request, its guarded text given
    required: str  # a required field besides model
    answer: dict[str, Any]
    tokens: tuple[int, int, int]  # what the row records from ``answer``
    upstream_key: str = UPSTREAM_KEY


CASES = {
    "images": Case(
        "/v1/images/generations",
        IMAGES_URL,
        "image-prod",
        "gpt-image-1",
        lambda text: {"model": "image-prod", "prompt": text},
        "prompt",
        {"created": 1, "data": [{"b64_json": "aGVsbG8="}], "usage": {"input_tokens": 3, "output_tokens": 4}},
        (3, 4, 7),
    ),
    "image edits": Case(
        "/v1/images/edits",
        f"{IMAGES_URL.rsplit('/', 1)[0]}/edits",
        "image-prod",
        "gpt-image-1",
        lambda text: {
            "model": "image-prod",
            "prompt": text,
            "images": [{"image_url": "https://x.test/a.png"}],
        },
        "prompt",
        {"created": 1, "data": [{"b64_json": "aGVsbG8="}], "usage": {"input_tokens": 3, "output_tokens": 4}},
        (3, 4, 7),
    ),
    "chat": Case(
        "/v1/chat/completions",
        CHAT_URL,
        "chat-prod",
        "gpt-4o-mini",
        lambda text: {"model": "chat-prod", "messages": [{"role": "user", "content": text}]},
        "messages",
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
        (9, 2, 11),
    ),
    "embeddings": Case(
        "/v1/embeddings",
        EMBEDDINGS_URL,
        "embed",
        "text-embedding-3-small",
        lambda text: {"model": "embed", "input": text},
        "input",
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        },
        (5, 0, 5),
    ),
    "rerank": Case(
        "/v1/rerank",
        RERANK_URL,
        "reranker",
        "jina-reranker-v2-base-multilingual",
        lambda text: {"model": "reranker", "query": text, "documents": ["a", "b"]},
        "query",
        {
            "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
            "usage": {"total_tokens": 12},
        },  # fmt: skip
        (12, 0, 12),
        "jina-key",
    ),
    "responses": Case(
        "/v1/responses",
        f"{CHAT_URL.rsplit('/', 2)[0]}/responses",
        "chat-prod",
        "gpt-4o-mini",
        lambda text: {"model": "chat-prod", "input": text},
        "input",
        {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}
            ],
            "usage": {"input_tokens": 6, "output_tokens": 2, "total_tokens": 8},
        },
        (6, 2, 8),
    ),
}
