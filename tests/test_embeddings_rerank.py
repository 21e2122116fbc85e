"""Embeddings' input shapes and rerank's documents: what is accepted, refused and read."""

from __future__ import annotations

import json

import pytest

from .conftest import EMBEDDINGS_URL, RERANK_URL, assert_envelope, auth

EMBEDDING = {"object": "list", "data": [], "usage": {"prompt_tokens": 1, "total_tokens": 1}}


@pytest.mark.parametrize("value", ["a cat", ["a", "b"], [1, 2, 3], [[1, 2], [3]], [2.0]])
def test_embedding_inputs_accepted_and_forwarded_as_sent(client, upstream, value):
    upstream.post(EMBEDDINGS_URL, json=EMBEDDING)
    r = client.post("/v1/embeddings", headers=auth(), json={"model": "embed", "input": value})
    assert r.status_code == 200
    assert json.loads(upstream.calls[0].request.body)["input"] == value


@pytest.mark.parametrize("value", ["", [], [[]], [1, "a"], [True], {"text": "x"}, None, [1.5], [["a"]]])
def test_embedding_inputs_refused(client, upstream, value):
    r = client.post("/v1/embeddings", headers=auth(), json={"model": "embed", "input": value})
    assert_envelope(r, 400, "invalid_request_error", "invalid_value", "input")


def test_embedding_strings_are_guarded_token_ids_are_not(client, upstream):
    r = client.post(
        "/v1/embeddings", headers=auth(), json={"model": "embed", "input": ["ok", "forbidden phrase"]}
    )
    assert_envelope(r, 422, "content_filter", "content_policy_violation")
    upstream.post(EMBEDDINGS_URL, json=EMBEDDING)
    assert (
        client.post("/v1/embeddings", headers=auth(), json={"model": "embed", "input": [[7, 8]]}).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "reranker", "documents": ["a"]}, "query"),
        ({"model": "reranker", "query": "q"}, "documents"),
        ({"model": "reranker", "query": "q", "documents": []}, "documents"),
        ({"model": "reranker", "query": "q", "documents": [1]}, "documents"),
        ({"model": "reranker", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ],
)
def test_rerank_bodies_refused(client, upstream, body, param):
    r = client.post("/v1/rerank", headers=auth(), json=body)
    assert r.status_code == 400 and r.get_json()["error"]["param"] == param


def test_rerank_guardrails_read_the_query_and_every_documents_text(client, upstream):
    for documents in (["fine", "forbidden phrase"], [{"text": "forbidden phrase", "id": 1}]):
        r = client.post(
            "/v1/rerank", headers=auth(), json={"model": "reranker", "query": "q", "documents": documents}
        )
        assert r.status_code == 422


def test_cohere_style_billed_units_are_recorded(app, client, upstream):
    upstream.post(
        RERANK_URL, json={"results": [], "meta": {"billed_units": {"search_units": 1, "input_tokens": 9}}}
    )
    body = {"model": "reranker", "query": "q", "documents": ["a"]}
    assert client.post("/v1/rerank", headers=auth(), json=body).status_code == 200
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    row = ledger.query()[0]
    assert (row["search_units"], row["input_tokens"], row["total_tokens"]) == (1, 9, 9)
