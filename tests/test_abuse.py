"""Bad input, generated, on every proxied route: whatever arrives, the answer is an envelope, never
a 500, and nothing reaches the upstream unless the request was valid."""

from __future__ import annotations

import json

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisix_flask.proxy.multipart import FILE_FIELDS

from .conftest import CALLER_KEY, auth
from .forms import field, file, raw_form
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


# The edits route also takes multipart/form-data: the same checks, on forms.
EDITS = ROUTES["image edits"]
VALID_PARTS = (
    ("field", "model", b"image-prod"),
    ("field", "prompt", b"p"),
    ("file", "image", "a.png", b"x", "image/png"),
)
# Names without the characters that end a quoted name or a header line (the form's shape is fuzzed apart).
safe = st.text(st.characters(exclude_characters='"\\\r\n', exclude_categories=("Cs",)), max_size=10)
part_names = st.sampled_from(
    ["model", "prompt", "image", "image[]", "mask", "n", "size", "quality", "response_format", "stream",
     "partial_images", "output_compression", "user"]
) | safe  # fmt: skip
# Bytes that no UTF-8 text holds, whatever valid text surrounds them: a lone surrogate (as JSON's
# \\ud800 would be written), a continuation byte, a byte UTF-8 never uses, a cut sequence, an overlong one.
not_utf8 = st.builds(
    lambda a, bad, b: a.encode() + bad + b.encode(),
    st.text(max_size=8),
    st.sampled_from([b"\xed\xa0\x80", b"\x80", b"\xff", b"\xe2\x82", b"\xc0\xaf"]),
    st.text(max_size=8),
)
part_values = (
    st.sampled_from([b"image-prod", b"dalle", b"openai/x", b"keyless", b"", b"0", b"1", b"11", b"-1", b"2.0",
                     b"true", b"yes", b"b64_json", b"1024x1024", b"a Forbidden Phrase"])
    | st.text(max_size=30).map(str.encode)
    | st.binary(max_size=40)
    | not_utf8
)  # fmt: skip
text_parts = st.tuples(st.just("field"), part_names, part_values)
file_parts = st.tuples(
    st.just("file"),
    part_names,
    safe,
    st.binary(max_size=100),
    st.sampled_from(["image/png", "image/webp", "application/octet-stream", ""]) | header_values,
)
# Some of the valid parts, and more parts of any kind, in any order.
near_miss_forms = st.builds(
    lambda kept, extra: [*kept, *extra],
    st.lists(st.sampled_from(VALID_PARTS), unique=True),
    st.lists(text_parts | file_parts, max_size=6),
).flatmap(st.permutations)


def written(parts) -> bytes:
    """The multipart body of ``parts``: ("field", name, value), ("file", name, filename, data, type)."""
    return raw_form(*(field(*p[1:]) if p[0] == "field" else file(*p[1:]) for p in parts))[0]


FORM = raw_form()[1]["Content-Type"]
valid_forms = near_miss_forms.map(written)
form_bodies = st.one_of(
    st.binary(max_size=300),  # anything at all, said to be a form
    st.builds(lambda body, cut: body[:cut], valid_forms, st.integers(0, 300)),  # a form cut short
    st.builds(  # bytes spliced into a form: a broken boundary, header or part
        lambda body, at, junk: body[:at] + junk + body[at:],
        valid_forms,
        st.integers(0, 300),
        st.binary(min_size=1, max_size=20) | st.sampled_from([b"\r\n", b"--", b"\r\n\r\n", b'"', b";"]),
    ),
    st.lists(st.binary(max_size=60), max_size=4).map(lambda heads: raw_form(*heads)[0]),  # any part headers
)
# The form's Content-Type: its boundary quoted, another one, none, an empty one; another multipart.
form_types = st.sampled_from(
    [FORM, FORM.replace("boundary=", 'boundary="') + '"', FORM + "-other", FORM.upper(),
     "multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; boundary=""',
     "multipart/mixed; boundary=x"]
) | header_values.map(lambda v: f"multipart/form-data; boundary={v}")  # fmt: skip


def post_form(client, body: bytes, headers=None, content_type: str = FORM):
    return client.post(EDITS.path, data=body, headers={**(headers or auth()), "Content-Type": content_type})


@EXAMPLES
@given(body=form_bodies, content_type=form_types)
def test_any_form_body(fuzz_client, body, content_type):
    client, upstream = fuzz_client
    before = len(upstream.calls)
    check(post_form(client, body, content_type=content_type), upstream, before)


@pytest.mark.parametrize(
    "head",
    [b"Content-Disposition: form-data", b'Content-Disposition: form-data; filename="a.png"',
     b"Content-Disposition\r: form-data; name=\"x\""],
    ids=["no name", "a file with no name", "a stray CR"],
)  # fmt: skip
def test_a_part_without_a_name(fuzz_client, head):
    """A form otherwise valid, with one more part that names no field."""
    client, upstream = fuzz_client
    body = written(VALID_PARTS)
    body = body.replace(b"--XyZ-boundary--", b"--XyZ-boundary\r\n" + head + b"\r\n\r\nv\r\n--XyZ-boundary--")
    r = post_form(client, body)
    check(r, upstream, 0)
    assert r.status_code == 400


@EXAMPLES
@given(headers=auth_headers, parts=near_miss_forms)
def test_any_credentials_and_near_miss_forms(fuzz_client, headers, parts):
    client, upstream = fuzz_client
    before = len(upstream.calls)
    check(post_form(client, written(parts), headers), upstream, before)


def test_a_thirty_megabyte_form(fuzz_client):
    client, upstream = fuzz_client
    body = written([*VALID_PARTS, ("file", "image[]", "b.png", b"x" * (30 * 1024 * 1024), "image/png")])
    r = post_form(client, body)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "request_too_large"
    assert not upstream.calls


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@EXAMPLES
@given(parts=near_miss_forms, name=part_names, value=not_utf8)
def test_a_form_field_that_is_not_utf8_is_400_naming_it(fuzz_client, parts, name, value):
    """The multipart twin of a lone surrogate in JSON: wherever it sits, 400 naming a field that
    holds such bytes, nothing sent."""
    client, upstream = fuzz_client
    parts = [*parts, ("field", name, value)]
    before = len(upstream.calls)
    r = post_form(client, written(parts))
    check(r, upstream, before)
    bad = {p[1] for p in parts if p[0] == "field" and not _utf8(p[2])}
    error = r.get_json()["error"]
    if bad <= FILE_FIELDS:  # a file sent as a plain field is not read as text: refused as not a file
        assert r.status_code == 400 and error["type"] == "invalid_request_error", error
        return
    assert r.status_code == 400 and error["code"] == "invalid_value" and error["param"] in bad, error


# Python's int() refuses a string of more than 4,300 digits (sys.get_int_max_str_digits()).
@pytest.mark.parametrize("name", ["n", "partial_images", "output_compression"])
@pytest.mark.parametrize(
    "value",
    [
        "1e400",
        "9" * 30,
        "-" + "9" * 30,
        "9" * 4300,
        "9" * 4301,
        "-" + "9" * 5000,
    ],
    ids=["1e400", "30 digits", "-30 digits", "4300 digits", "4301 digits", "-5000 digits"],
)
def test_a_form_number_no_field_takes_is_400(fuzz_client, name, value):
    """The multipart twin of a number no double holds: a form field's text is read as an integer
    only when it is one, and one out of range or past what int() reads is a 400 naming it."""
    client, upstream = fuzz_client
    r = post_form(client, written([*VALID_PARTS, ("field", name, value.encode())]))
    check(r, upstream, 0)
    error = r.get_json()["error"]
    assert r.status_code == 400 and (error["code"], error["param"]) == ("invalid_value", name)


# Fields the route checks, each with the values it is sent twice with (model and prompt: once more
# besides the valid form's own).
TWICE = {
    "model": [b"dalle"],
    "prompt": [b"a Forbidden Phrase"],
    "n": [b"1", b"2"],
    "size": [b"1024x1024", b"512x512"],
    "response_format": [b"b64_json", b"url"],
    "stream": [b"true", b"false"],
    "user": [b"u", b"v"],
}


@pytest.mark.parametrize("name", [*TWICE, "mask"])
def test_a_form_field_sent_twice_is_refused(fuzz_client, name):
    """The multipart twin of duplicate keys: of two values the gateway would check one and the
    upstream might read the other, so a field it checks, sent twice, is a 400 naming it."""
    client, upstream = fuzz_client
    if name == "mask":
        twice = [("file", "mask", f"{i}.png", b"x", "image/png") for i in range(2)]
    else:
        twice = [("field", name, value) for value in TWICE[name]]
    r = post_form(client, written([*VALID_PARTS, *twice]))
    check(r, upstream, 0)
    error = r.get_json()["error"]
    assert r.status_code == 400 and (error["code"], error["param"]) == ("invalid_value", name)
