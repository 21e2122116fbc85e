"""Bad forms, generated, on the route that takes multipart/form-data (image edits): whatever
arrives, the answer is an envelope, never a 500, and nothing reaches the upstream unless the form
was valid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aisix_flask.proxy.multipart import FILE_FIELDS

from .conftest import auth
from .forms import field, file, raw_form
from .fuzzing import EXAMPLES, ROUTES, auth_headers, check, header_values

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
