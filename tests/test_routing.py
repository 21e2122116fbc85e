"""Routing in one process: the routing block's checks, the table of what moves a request on, and
the attempt loop (failover, cooldown, round robin, eligibility) against mocked upstreams."""

from __future__ import annotations

import pytest
import requests
import responses

from aisix_flask.config import ConfigError, load_config
from aisix_flask.config.aliases import Route
from aisix_flask.config.resources import ProviderKey, Routing, RoutingTarget
from aisix_flask.errors import UpstreamAuthFailed, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from aisix_flask.proxy.outcomes import Answer
from aisix_flask.proxy.send import Attempt
from aisix_flask.proxy.tries import after

from .conftest import (
    CHAT_URL,
    EMBEDDINGS_URL,
    IMAGES_URL,
    RERANK_URL,
    URL_ANSWER,
    assert_envelope,
    auth,
    named,
    write_config,
)
from .routed import CHAT, SECOND, chat, rows_of

# -- config ---------------------------------------------------------------------------------------


def test_a_bad_routing_block_is_refused_with_the_path_of_every_problem(tmp_path, routed):
    routed["models"] += [
        {"display_name": "r1", "routing": {"targets": [{"model": "nope"}, {"model": "chat-routed"}]}},
        {
            "display_name": "r2",
            "routing": {"targets": [{"model": "openai/*"}, {"model": "chat-b", "weight": 0}]},
        },
        {"display_name": "r3", "provider": "openai", "routing": {"targets": [{"model": "chat-b"}]}},
        {
            "display_name": "r4",
            "routing": {"targets": [{"model": "chat-b"}], "hash_on": [{"type": "api_key"}]},
        },
        {"display_name": "r5", "routing": {"targets": [{"model": "chat-b"}, {"model": "chat-b"}]}},
        {"display_name": "r6", "routing": {"strategy": "random", "targets": []}},
    ]
    with pytest.raises(ConfigError) as info:
        load_config(str(write_config(tmp_path / "bad.yaml", routed)))
    problems = "\n".join(info.value.problems)
    for expected in (
        "models[16].routing.targets[0].model: unknown model 'nope'",
        "models[16].routing.targets[1].model: 'chat-routed' is a routing model; a target must be a direct",
        "models[17].routing.targets[1].weight: Must be greater than or equal to 1.",
        "models[18].provider: A routing model takes none of provider",
        "models[19].routing.hash_on: Only the consistent_hash strategy takes hash_on.",
        "models[20].routing.targets[1].model: 'chat-b' is already a target of this model",
        "models[21].routing.strategy: Must be one of: failover, round_robin",
        "models[21].routing.targets: Shorter than minimum length 1.",
    ):
        assert expected in problems, problems


def test_a_routing_alias_is_listed_by_its_first_targets_provider(make_app, routed):
    data = make_app(routed).test_client().get("/v1/models", headers=auth()).get_json()["data"]
    assert {m["id"]: m["owned_by"] for m in data}["chat-routed"] == "openai"


# -- what moves on: the table, row by row ---------------------------------------------------------

ROUTE = Route("t", None, ProviderKey("k", "openai", "openai", "sk"), "m")  # type: ignore[arg-type]
ROUTING = Routing((RoutingTarget("a"), RoutingTarget("b")), fallback_on_statuses=frozenset({409}))


def attempt(status=None, error=None, unknown=False, retry_after=None, no_retry=False, answer_status=None):
    answer = None
    if answer_status is not None:
        answer = Answer(answer_status, b"{}", "application/json", retry_after)
    return Attempt(ROUTE, 0.0, 1.0, answer=answer, error=error, outcome_unknown=unknown, status=status,
                   retry_after=retry_after, upstream_says_no_retry=no_retry)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "same", "move", "cool"),
    [
        ("answered", False, False, None),
        ("refused before sending", True, True, 30.0),
        ("500", False, True, 30.0),
        ("529", False, True, 30.0),
        ("503 with Retry-After", False, True, 12.0),
        ("429 with Retry-After", False, True, 7.0),
        ("429, retry_on_429 false", False, False, 30.0),
        ("401", False, True, 30.0),
        ("409 in fallback_on_statuses", False, True, None),
        ("400 the caller's", False, False, None),
        ("500 with x-should-retry false", False, False, 30.0),
        ("read timeout after sending", False, False, 30.0),
        ("connection lost after sending", False, False, 30.0),
        ("a 2xx that cannot be read", False, False, None),
    ],
)
def test_what_one_attempt_allows_next(case, same, move, cool):
    routing = ROUTING
    attempts = {
        "answered": attempt(status=200, answer_status=200),
        "refused before sending": attempt(error=UpstreamUnreachable("x", should_retry=True)),
        "500": attempt(status=500, error=UpstreamError("x")),
        "529": attempt(status=529, error=UpstreamError("x")),
        "503 with Retry-After": attempt(status=503, error=UpstreamError("x"), retry_after="12"),
        "429 with Retry-After": attempt(status=429, answer_status=429, retry_after="7"),
        "429, retry_on_429 false": attempt(status=429, answer_status=429),
        "401": attempt(status=401, error=UpstreamAuthFailed("x")),
        "409 in fallback_on_statuses": attempt(status=409, answer_status=409),
        "400 the caller's": attempt(status=400, answer_status=400),
        "500 with x-should-retry false": attempt(status=500, error=UpstreamError("x"), no_retry=True),
        "read timeout after sending": attempt(error=UpstreamTimeout("x"), unknown=True),
        "connection lost after sending": attempt(error=UpstreamUnreachable("x"), unknown=True),
        "a 2xx that cannot be read": attempt(status=200, error=UpstreamError("x"), unknown=True),
    }
    if case == "429, retry_on_429 false":
        routing = Routing(ROUTING.targets, retry_on_429=False)
    verdict = after(attempts[case], routing, 30.0)
    assert (verdict.same_target, verdict.next_target, verdict.cool_s) == (same, move, cool)


# -- the attempt loop -----------------------------------------------------------------------------


def test_a_failing_target_is_passed_over_and_cooled(make_app, routed, upstream):
    upstream.post(CHAT_URL, status=500, json={"error": {"message": "down"}})
    second = upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    app = make_app(routed)
    client = app.test_client()
    r = chat(client)
    assert r.status_code == 200
    assert (r.headers["x-aisix-target"], r.headers["x-aisix-attempts"]) == ("chat-b", "2")
    r = chat(client)  # chat-prod cools down: straight to chat-b
    assert (r.status_code, r.headers["x-aisix-attempts"]) == (200, "1")
    assert len(upstream.calls) == 3 and second.call_count == 2
    rows = sorted(rows_of(app), key=lambda row: row["attempts"])
    assert [(row["target"], row["attempts"], row["upstream_model"]) for row in rows] == [
        ("chat-b", 1, "gpt-4o"),
        ("chat-b", 2, "gpt-4o"),
    ]


def test_a_read_timeout_is_never_sent_to_another_target(make_app, routed, upstream):
    upstream.post(CHAT_URL, body=requests.exceptions.ReadTimeout("slow"))
    r = chat(make_app(routed).test_client())  # the second target is not mocked: never called
    assert_envelope(r, 504, "timeout", "upstream_timeout")
    assert len(upstream.calls) == 1
    assert (r.headers["x-aisix-target"], r.headers["x-aisix-attempts"]) == ("chat-prod", "1")


def test_the_callers_own_400_is_passed_through(make_app, routed, upstream):
    upstream.post(CHAT_URL, status=400, json={"error": {"message": "bad", "type": "invalid_request_error"}})
    r = chat(make_app(routed).test_client())
    assert r.status_code == 400 and len(upstream.calls) == 1


def test_a_direct_model_tries_again_only_what_was_never_sent(make_app, config, upstream):
    upstream.post(CHAT_URL, body=requests.exceptions.ConnectTimeout("no route"))
    upstream.post(CHAT_URL, json=CHAT)
    app = make_app(config)
    r = chat(app.test_client(), model="chat-prod")
    assert r.status_code == 200 and "x-aisix-target" not in r.headers
    assert len(upstream.calls) == 2
    [row] = rows_of(app)
    assert (row["status"], row["attempts"], row["target"]) == (200, 2, "chat-prod")


def test_every_target_cooling_is_503_with_retry_after(make_app, routed, upstream):
    upstream.post(CHAT_URL, status=503, json={"error": {"message": "down"}})
    upstream.post(f"{SECOND}/chat/completions", status=503, json={"error": {"message": "down"}})
    client = make_app(routed).test_client()
    assert chat(client).status_code == 502  # the last failure's
    r = chat(client)
    assert_envelope(r, 503, "provider_error", "no_target_available")
    assert 1 <= int(r.headers["Retry-After"]) <= 30 and r.headers["x-should-retry"] == "true"
    assert len(upstream.calls) == 2


def test_try_anyway_sends_to_cooling_targets(make_app, routed, upstream):
    named(routed, "models", "chat-routed")["routing"]["when_all_unavailable"] = "try_anyway"
    upstream.post(CHAT_URL, status=503, json={"error": {"message": "down"}})
    upstream.post(f"{SECOND}/chat/completions", status=503, json={"error": {"message": "down"}})
    client = make_app(routed).test_client()
    assert chat(client).status_code == 502  # both failed: both cool
    upstream.replace(responses.POST, CHAT_URL, json=CHAT)
    assert chat(client).status_code == 200


def test_round_robin_follows_the_weights(make_app, routed, upstream):
    named(routed, "models", "chat-routed")["routing"] = {
        "strategy": "round_robin",
        "targets": [{"model": "chat-prod", "weight": 3}, {"model": "chat-b", "weight": 1}],
    }
    first = upstream.post(CHAT_URL, json=CHAT)
    second = upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    for _ in range(400):
        assert chat(client).status_code == 200
    assert (first.call_count, second.call_count) == (300, 100)


def test_a_lower_tier_only_when_the_higher_one_cannot(make_app, routed, upstream):
    named(routed, "models", "chat-routed")["routing"] = {
        "targets": [{"model": "chat-b", "priority": -1}, {"model": "chat-prod"}],
    }
    first = upstream.post(CHAT_URL, json=CHAT)
    second = upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    assert chat(client).headers["x-aisix-target"] == "chat-prod"
    upstream.replace(responses.POST, CHAT_URL, status=500, json={"error": {"message": "down"}})
    assert chat(client).headers["x-aisix-target"] == "chat-b"
    assert (first.call_count, second.call_count) == (1, 1)


def test_consistent_hash_keeps_a_key_on_one_target(make_app, routed, upstream):
    named(routed, "models", "chat-routed")["routing"] = {
        "strategy": "consistent_hash",
        "targets": [{"model": "chat-prod"}, {"model": "chat-b"}],
    }
    upstream.post(CHAT_URL, json=CHAT)
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    seen = {
        key: {chat(client, **{"x-aisix-routing-key": key}).headers["x-aisix-target"] for _ in range(5)}
        for key in (f"user-{i}" for i in range(20))
    }
    assert all(len(targets) == 1 for targets in seen.values())
    assert {t for targets in seen.values() for t in targets} == {"chat-prod", "chat-b"}


def test_an_image_request_goes_only_to_openai_targets(make_app, routed, upstream):
    upstream.post(IMAGES_URL, json=URL_ANSWER)
    client = make_app(routed).test_client()
    r = client.post("/v1/images/generations", headers=auth(), json={"model": "images-routed", "prompt": "p"})
    assert r.status_code == 200 and r.headers["x-aisix-target"] == "image-prod"
    r = client.post(
        "/v1/images/generations", headers=auth(), json={"model": "images-deepseek-only", "prompt": "p"}
    )
    assert_envelope(r, 400, "invalid_request_error", "unsupported_provider", "model")


@pytest.mark.parametrize(
    ("route", "url", "model", "body"),
    [
        ("/v1/embeddings", EMBEDDINGS_URL, "text-embedding-3-small", {"input": "hi"}),
        ("/v1/rerank", RERANK_URL, "jina-reranker-v2-base-multilingual", {"query": "q", "documents": ["d"]}),
    ],
)
def test_embeddings_and_rerank_fail_over_too(make_app, routed, upstream, route, url, model, body):
    key = {"display_name": "jina-b", "provider": "jina", "api_key": "jina-b", "api_base": SECOND}
    routed["provider_keys"].append(key)
    first = "embed" if "embed" in route else "reranker"
    provider, provider_key = ("openai", "openai-b") if first == "embed" else ("jina", "jina-b")
    routed["models"] += [
        {
            "display_name": f"{first}-b",
            "provider": provider,
            "model_name": model,
            "provider_key": provider_key,
        },
        {"display_name": "routed", "routing": {"targets": [{"model": first}, {"model": f"{first}-b"}]}},
    ]
    upstream.post(url, status=502, json={"error": {"message": "down"}})
    answer = {"object": "list", "data": [], "results": [], "usage": {"total_tokens": 1}}
    upstream.post(f"{SECOND}/{url.rsplit('/', 1)[1]}", json=answer)
    r = make_app(routed).test_client().post(route, headers=auth(), json={"model": "routed", **body})
    assert (r.status_code, r.headers["x-aisix-target"], r.headers["x-aisix-attempts"]) == (
        200,
        f"{first}-b",
        "2",
    )


def test_an_idempotency_key_covers_the_whole_routed_request(make_app, routed, upstream):
    upstream.post(CHAT_URL, status=500, json={"error": {"message": "down"}})
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    first = chat(client, **{"Idempotency-Key": "order-1"})
    again = chat(client, **{"Idempotency-Key": "order-1"})  # a replay: no attempt at all
    assert (first.status_code, again.status_code) == (200, 200) and first.data == again.data
    assert len(upstream.calls) == 2
