"""GET /v1/models and /v1/models/{id}: the aliases a caller's key may use."""

from __future__ import annotations

from .conftest import LIMITED_KEY, assert_envelope, auth


def test_the_list_is_every_exact_alias_the_key_may_use_sorted(client):
    r = client.get("/v1/models", headers=auth())
    assert r.status_code == 200
    body = r.get_json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == sorted(ids) and "openai/*" not in ids  # a wildcard is a pattern, not a model
    assert {"image-prod", "chat-prod", "deepseek-chat", "reranker"} <= set(ids)
    chat = next(m for m in body["data"] if m["id"] == "deepseek-chat")
    assert chat["object"] == "model" and chat["owned_by"] == "deepseek" and isinstance(chat["created"], int)


def test_a_key_sees_only_its_allowed_models(client):
    assert [m["id"] for m in client.get("/v1/models", headers=auth(LIMITED_KEY)).get_json()["data"]] == [
        "dalle"
    ]


def test_retrieve_an_exact_alias_and_any_id_a_wildcard_matches(client):
    assert client.get("/v1/models/chat-prod", headers=auth()).get_json()["id"] == "chat-prod"
    r = client.get("/v1/models/openai/gpt-4.1", headers=auth())
    assert r.status_code == 200 and r.get_json() == {
        **r.get_json(),
        "id": "openai/gpt-4.1",
        "owned_by": "openai",
    }


def test_retrieve_unknown_is_404_and_not_allowed_is_403(client):
    assert_envelope(
        client.get("/v1/models/nope", headers=auth()),
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
    )
    assert_envelope(
        client.get("/v1/models/chat-prod", headers=auth(LIMITED_KEY)),
        403,
        "permission_error",
        "model_not_allowed",
    )


def test_both_need_a_caller_key(client):
    assert_envelope(client.get("/v1/models"), 401, "authentication_error", "invalid_api_key")
    assert_envelope(client.get("/v1/models/chat-prod"), 401, "authentication_error", "invalid_api_key")
    assert client.post("/v1/models", headers=auth()).status_code == 405


def test_a_wildcard_pattern_is_not_a_model(client):
    assert_envelope(
        client.get("/v1/models/openai/*", headers=auth()),
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
    )
