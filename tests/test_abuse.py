"""Bad input, generated, on every proxied route: whatever arrives, the answer is an envelope, never
a 500, and nothing reaches the upstream unless the request was valid."""

from __future__ import annotations

import json

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import CALLER_KEY, CHAT_URL, EMBEDDINGS_URL, IMAGES_URL, RERANK_URL, auth

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON can escape what UTF-8 cannot carry: a lone UTF-16 surrogate (\\ud800), anywhere in a string.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
with_surrogate = st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), surrogates, st.text(max_size=8))
texts = st.text(max_size=50) | with_surrogate
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | with_surrogate, inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]) | json_values},
        optional={"content": texts | json_values},
    ),  # fmt: skip
    max_size=3,
)


class Route:
    """A route, what its upstream answers, and requests that look almost right for it."""

    def __init__(self, path: str, upstream_url: str, answer: dict, models: list[str], fields: dict):
        self.path, self.upstream_url, self.answer = path, upstream_url, answer
        self.near_misses = st.fixed_dictionaries(
            {},
            optional={"model": st.sampled_from([*models, "openai/x", "keyless", ""]) | json_values, **fields},
        )
        self.valid = {"model": models[0], **{k: v for k, v in VALID[path].items()}}


VALID = {
    "/v1/images/generations": {"prompt": "p"},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "p"}]},
    "/v1/embeddings": {"input": "p"},
    "/v1/rerank": {"query": "p", "documents": ["a"]},
}
ANY = json_values
ROUTES = [
    Route(
        "/v1/images/generations",
        IMAGES_URL,
        {"created": 1, "data": [{"url": "u"}]},
        ["image-prod", "dalle"],
        {
            "prompt": st.text(max_size=30) | ANY,
            "n": ANY,
            "size": ANY,
            "quality": ANY,
            "response_format": ANY,
            "stream": ANY,
            "style": ANY,
            "user": ANY,
            "background": ANY,
        },
    ),  # fmt: skip
    Route(
        "/v1/chat/completions",
        CHAT_URL,
        {"choices": [{"message": {"content": "x"}}]},
        ["chat-prod", "deepseek-chat"],
        {
            "messages": messages | ANY,
            "stream": ANY,
            "stream_options": ANY,
            "n": ANY,
            "temperature": ANY,
            "stop": ANY,
            "tools": ANY,
            "max_tokens": ANY,
        },
    ),  # fmt: skip
    Route(
        "/v1/embeddings",
        EMBEDDINGS_URL,
        {"data": []},
        ["embed"],
        {
            "input": texts | st.lists(st.integers(0, 9), max_size=3) | ANY,
            "encoding_format": ANY,
            "dimensions": ANY,
        },
    ),  # fmt: skip
    Route(
        "/v1/rerank",
        RERANK_URL,
        {"results": []},
        ["reranker"],
        {"query": texts | ANY, "documents": st.lists(texts, max_size=3) | ANY, "top_n": ANY},
    ),  # fmt: skip
]
routes = pytest.mark.parametrize("route", ROUTES, ids=[r.path.rsplit("/", 1)[-1] for r in ROUTES])

bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),  # invalid UTF-8, truncated JSON, NaN, nothing at all…
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 5000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
)
# Numbers JSON allows and no double holds (they would be forwarded as the non-JSON Infinity).
huge_numbers = st.sampled_from(["1e400", "-1e400", "1E309", "123456789e999"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
auth_headers = st.one_of(
    st.just(auth()),
    st.just({"x-api-key": CALLER_KEY}),
    st.builds(lambda v: {"Authorization": v}, header_values),
    st.builds(lambda v: {"Authorization": f"Bearer {v}"}, header_values),
    st.builds(lambda v: {"x-api-key": v}, header_values),
    st.just({}),
)


@pytest.fixture
def fuzz_client(client):
    """The client, and an upstream that answers every call (so valid requests succeed)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        for route in ROUTES:
            upstream.post(route.upstream_url, json=route.answer)
        yield client, upstream


def check(r, upstream, calls_before: int) -> None:
    assert r.status_code != 500, r.get_data(as_text=True)
    if r.status_code == 200:
        return
    assert r.status_code in (400, 401, 403, 404, 413, 422, 501, 503), r.status_code
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.get_json()["error"]) == {"message", "type", "param", "code"}
    assert len(upstream.calls) == calls_before  # refused before anything was sent


def post(client, route: Route, data, headers=None):
    return client.post(
        route.path, data=data, headers={**(headers or auth()), "Content-Type": "application/json"}
    )


@routes
@EXAMPLES
@given(body=bodies)
def test_any_body(fuzz_client, route, body):
    client, upstream = fuzz_client
    before = len(upstream.calls)
    check(post(client, route, body), upstream, before)


@routes
@EXAMPLES
@given(headers=auth_headers, data=st.data())
def test_any_credentials_and_near_misses(fuzz_client, route, headers, data):
    client, upstream = fuzz_client
    body = data.draw(route.near_misses)
    before = len(upstream.calls)
    check(post(client, route, json.dumps(body), headers), upstream, before)


@routes
def test_thirty_megabytes(fuzz_client, route):
    client, upstream = fuzz_client
    body = json.dumps({**route.valid, "pad": "x" * (30 * 1024 * 1024)})
    r = post(client, route, body)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "request_too_large"
    assert not upstream.calls


def test_duplicate_keys_send_what_was_checked(fuzz_client):
    """The gateway forwards the value it validated, never a different one the upstream might pick."""
    client, upstream = fuzz_client
    route = ROUTES[0]
    raw = b'{"model": "image-prod", "prompt": "forbidden phrase", "prompt": "a cat", "n": "x", "n": 1}'
    assert post(client, route, raw).status_code == 200
    assert json.loads(upstream.calls[0].request.body) == {"model": "gpt-image-1", "prompt": "a cat", "n": 1}
    raw = b'{"model": "image-prod", "prompt": "a cat", "prompt": "forbidden phrase"}'
    assert post(client, route, raw).status_code == 422


def _holds_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_holds_surrogate(k) or _holds_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_surrogate(v) for v in value)
    return False


@routes
@EXAMPLES
@given(key=st.text(min_size=1, max_size=10) | with_surrogate, poison=json_values, data=st.data())
def test_a_lone_surrogate_anywhere_is_400_naming_its_field(fuzz_client, route, key, poison, data):
    """Whatever the depth, in a key or a value: 400, param the top-level field, nothing sent."""
    client, upstream = fuzz_client
    body = {**route.valid, **data.draw(route.near_misses), key: poison}
    before = len(upstream.calls)
    r = post(client, route, json.dumps(body))
    check(r, upstream, before)
    bad = [k for k, v in body.items() if _holds_surrogate(k) or _holds_surrogate(v)]
    if bad:
        error = r.get_json()["error"]
        assert r.status_code == 400 and error["code"] == "invalid_value", error
        names = [k.encode("utf-8", "backslashreplace").decode() for k in bad]
        assert error["param"] in names


@routes
@EXAMPLES
@given(number=huge_numbers, depth=st.integers(0, 3), data=st.data())
def test_a_number_no_double_holds_is_400(fuzz_client, route, number, depth, data):
    client, upstream = fuzz_client
    body = data.draw(route.near_misses)
    raw = json.dumps({**body, **route.valid, "extra": "HUGE"}).replace(
        '"HUGE"', "[" * depth + number + "]" * depth
    )
    before = len(upstream.calls)
    r = post(client, route, raw)
    check(r, upstream, before)
    assert r.status_code == 400 and r.get_json()["error"]["param"] in (*body, *route.valid, "extra")
