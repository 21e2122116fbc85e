"""Bad input, generated: whatever arrives, the answer is an envelope, never a 500, and nothing
reaches the upstream unless the request was valid."""

from __future__ import annotations

import json

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import CALLER_KEY, IMAGES_URL, auth

ROUTE = "/v1/images/generations"
FIELDS = [
    "model",
    "prompt",
    "n",
    "size",
    "quality",
    "response_format",
    "stream",
    "style",
    "user",
    "background",
]
EXAMPLES = settings(
    max_examples=150,
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
# Requests that look almost right: known fields, any values, sometimes a real model and prompt.
near_misses = st.fixed_dictionaries(
    {},
    optional={
        **{name: json_values for name in FIELDS},
        "model": st.sampled_from(["image-prod", "dalle", "openai/x", "compat-image", "keyless", ""])
        | json_values,
        "prompt": st.text(max_size=30) | json_values,
    },
)
# Numbers JSON allows and no double holds (they would be forwarded as the non-JSON Infinity).
huge_numbers = st.sampled_from(["1e400", "-1e400", "1E309", "123456789e999"])
bodies = st.one_of(
    near_misses.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),  # invalid UTF-8, truncated JSON, NaN, nothing at all…
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 5000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
)
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
        upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
        yield client, upstream


def check(r, upstream, calls_before: int) -> None:
    assert r.status_code != 500, r.get_data(as_text=True)
    if r.status_code == 200:
        return
    assert r.status_code in (400, 401, 403, 404, 413, 422, 501, 503), r.status_code
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.get_json()["error"]) == {"message", "type", "param", "code"}
    assert len(upstream.calls) == calls_before  # refused before anything was sent


@EXAMPLES
@given(body=bodies)
def test_any_body(fuzz_client, body):
    client, upstream = fuzz_client
    before = len(upstream.calls)
    check(
        client.post(ROUTE, data=body, headers={**auth(), "Content-Type": "application/json"}),
        upstream,
        before,
    )


@EXAMPLES
@given(headers=auth_headers, body=near_misses)
def test_any_credentials(fuzz_client, headers, body):
    client, upstream = fuzz_client
    before = len(upstream.calls)
    check(client.post(ROUTE, json=body, headers=headers), upstream, before)


def test_thirty_megabytes(fuzz_client):
    client, upstream = fuzz_client
    body = b'{"model": "image-prod", "prompt": "' + b"x" * (30 * 1024 * 1024) + b'"}'
    r = client.post(ROUTE, data=body, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "request_too_large"
    assert not upstream.calls


def test_duplicate_keys_send_what_was_checked(fuzz_client):
    """The gateway forwards the value it validated, never a different one the upstream might pick."""
    client, upstream = fuzz_client
    raw = b'{"model": "image-prod", "prompt": "forbidden phrase", "prompt": "a cat", "n": "x", "n": 1}'
    r = client.post(ROUTE, data=raw, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 200
    assert json.loads(upstream.calls[0].request.body) == {"model": "gpt-image-1", "prompt": "a cat", "n": 1}
    raw = b'{"model": "image-prod", "prompt": "a cat", "prompt": "forbidden phrase"}'
    assert client.post(ROUTE, data=raw, headers=auth()).status_code == 422


def _holds_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_holds_surrogate(k) or _holds_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_surrogate(v) for v in value)
    return False


@EXAMPLES
@given(body=near_misses, key=st.text(min_size=1, max_size=10) | with_surrogate, poison=json_values)
def test_a_lone_surrogate_anywhere_is_400_naming_its_field(fuzz_client, body, key, poison):
    """Whatever the depth, in a key or a value: 400, param the top-level field, nothing sent."""
    client, upstream = fuzz_client
    body = {"model": "image-prod", "prompt": "p", **body, key: poison}
    before = len(upstream.calls)
    r = client.post(ROUTE, data=json.dumps(body), headers={**auth(), "Content-Type": "application/json"})
    check(r, upstream, before)
    bad = [k for k, v in body.items() if _holds_surrogate(k) or _holds_surrogate(v)]
    if bad:
        error = r.get_json()["error"]
        assert r.status_code == 400 and error["code"] == "invalid_value", error
        names = [k.encode("utf-8", "backslashreplace").decode() for k in bad]
        assert error["param"] in names


@EXAMPLES
@given(body=near_misses, number=huge_numbers, depth=st.integers(0, 3))
def test_a_number_no_double_holds_is_400(fuzz_client, body, number, depth):
    client, upstream = fuzz_client
    raw = json.dumps({**body, "model": "image-prod", "prompt": "p", "extra": "HUGE"})
    raw = raw.replace('"HUGE"', "[" * depth + number + "]" * depth)
    before = len(upstream.calls)
    r = client.post(ROUTE, data=raw, headers={**auth(), "Content-Type": "application/json"})
    check(r, upstream, before)
    assert r.status_code == 400 and r.get_json()["error"]["param"] in (*body, "extra")
