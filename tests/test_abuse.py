"""Bad input, generated, on every proxied route: whatever arrives, the answer is an envelope, never
a 500, and nothing reaches the upstream unless the request was valid. (Forms: test_abuse_forms.py.)"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from .conftest import auth
from .fuzzing import (
    EXAMPLES,
    ROUTES,
    Route,
    auth_headers,
    bodies,
    check,
    huge_numbers,
    json_values,
    routes,
    with_surrogate,
)


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
    route = ROUTES["images"]
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
