"""What the fuzz tests of the proxied routes share (tests/test_abuse.py: JSON bodies;
tests/test_abuse_forms.py: multipart forms): the generated values, each route's near misses, a
client whose upstream answers every call, and the check every answer must pass."""

from __future__ import annotations

import json

import pytest
import responses
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from .conftest import CALLER_KEY, auth
from .proxied_routes import CASES

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
    """A route of the shared table (tests/proxied_routes.py), what its upstream answers, and requests
    that look almost right for it."""

    def __init__(self, name: str, other_models: list[str], fields: dict):
        case = CASES[name]
        self.path, self.upstream_url, self.answer = case.route, case.upstream_url, case.answer
        models = [case.model, *other_models]
        self.near_misses = st.fixed_dictionaries(
            {},
            optional={"model": st.sampled_from([*models, "openai/x", "keyless", ""]) | json_values, **fields},
        )
        self.valid = case.body("p")


ANY = json_values
IMAGE_FIELDS = {
    "prompt": st.text(max_size=30) | ANY,
    "n": ANY,
    "size": ANY,
    "quality": ANY,
    "response_format": ANY,
    "stream": ANY,
    "style": ANY,
    "user": ANY,
    "background": ANY,
}
image_reference = st.sampled_from([{"image_url": "https://x.test/a.png"}, {"file_id": "file-1"}]) | (
    st.fixed_dictionaries({}, optional={"image_url": texts | ANY, "file_id": texts | ANY})
)
# Per route of CASES: aliases besides its own, and its fields with what to put in them.
NEAR_MISSES = {
    "images": (["dalle"], IMAGE_FIELDS),
    "image edits": (
        ["dalle"],
        {
            **IMAGE_FIELDS,
            "images": st.lists(image_reference, max_size=3) | ANY,
            "mask": image_reference | ANY,
        },
    ),
    "chat": (
        ["deepseek-chat"],
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
    ),
    "embeddings": (
        [],
        {
            "input": texts | st.lists(st.integers(0, 9), max_size=3) | ANY,
            "encoding_format": ANY,
            "dimensions": ANY,
        },
    ),
    "rerank": (
        [],
        {"query": texts | ANY, "documents": st.lists(texts, max_size=3) | ANY, "top_n": ANY},
    ),
    "responses": (
        ["deepseek-chat"],
        {
            "input": texts | st.lists(st.fixed_dictionaries({"role": texts, "content": texts | ANY})) | ANY,
            "instructions": ANY,
            "stream": ANY,
            "max_output_tokens": ANY,
            "temperature": ANY,
            "tools": ANY,
        },
    ),
}
ROUTES = {name: Route(name, *NEAR_MISSES[name]) for name in CASES}  # a new route needs its near misses
routes = pytest.mark.parametrize("route", list(ROUTES.values()), ids=lambda r: r.path.rsplit("/", 1)[-1])

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
        for route in ROUTES.values():
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
