"""POST /v1/images/edits: multipart parts sent on byte for byte (only model rewritten), JSON
references, the checks, the limits, idempotency and streaming; against the real fake upstream."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os

import pytest
import requests

from .conftest import assert_envelope, auth, base_config
from .fake_upstream import PNG_1PX
from .forms import field, file, raw_form

ROUTE = "/v1/images/edits"
PNG_A, PNG_B, MASK = os.urandom(3000), os.urandom(70_000), os.urandom(500)


@pytest.fixture
def edits(make_app, tmp_path, fake):
    """(app, client) against the fake upstream, its calls forgotten."""
    requests.delete(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5)
    config = base_config(tmp_path, fake.url)
    config["gateway"]["request_body_limit_bytes"] = 2_000_000
    config["gateway"]["stream_keepalive_s"] = 0.2
    app = make_app(config)
    return app, app.test_client()


def last_call(fake) -> dict:
    return requests.get(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5).json()[-1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(app) -> list[dict]:
    ledger = app.extensions["aisix"].ledger
    assert ledger.flush(10)
    return ledger.query()


def test_every_part_is_sent_on_byte_for_byte_and_only_model_is_rewritten(edits, fake):
    app, client = edits
    body, headers = raw_form(
        field("prompt", "add a hat"),
        file("image[]", "a.png", PNG_A),
        field("model", "image-prod"),
        file("image[]", "b b.webp", PNG_B, "image/webp"),
        file("mask", "mask.png", MASK),
        field("size", "1024x1024"),
        field("brand_new", "kept as sent ✓"),  # a field after the files, not UTF-8-only ASCII
    )
    r = client.post(ROUTE, data=body, headers=headers)
    assert r.status_code == 200 and r.get_json()["data"]
    parts = last_call(fake)["parts"]
    assert [(p["name"], p["filename"]) for p in parts] == [
        ("prompt", None), ("image[]", "a.png"), ("model", None), ("image[]", "b b.webp"),
        ("mask", "mask.png"), ("size", None), ("brand_new", None),
    ]  # fmt: skip
    assert [p["sha256"] for p in parts if p["filename"]] == [sha(PNG_A), sha(PNG_B), sha(MASK)]
    assert [p["text"] for p in parts if not p["filename"]] == [
        "add a hat", "gpt-image-1", "1024x1024", "kept as sent ✓"
    ]  # fmt: skip
    assert dict(parts[3]["headers"])["Content-Type"] == "image/webp"
    [row] = rows(app)
    assert (row["route"], row["model"], row["upstream_model"], row["status"], row["images"]) == (
        ROUTE, "image-prod", "gpt-image-1", 200, 1
    )  # fmt: skip
    assert row["size"] == "1024x1024"


def test_odd_but_valid_shapes(edits, fake):
    """Quoted names, a part with extra headers, a name written in another case of header."""
    app, client = edits
    body, headers = raw_form(
        b'content-disposition: form-data; name="model"\r\n\r\nimage-prod',
        b'Content-Disposition: form-data; name="prompt"\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nblue",
        b'Content-Disposition: form-data; name="image"; filename="we\\"ird;name.png"\r\n'
        b"Content-Type: application/octet-stream\r\nX-Extra: 1\r\n\r\n" + PNG_A,
        boundary="----WebKitFormBoundary7MA4YWxkTrZu0gW",
    )
    assert client.post(ROUTE, data=body, headers=headers).status_code == 200
    parts = last_call(fake)["parts"]
    assert parts[2]["filename"] == 'we"ird;name.png' and parts[2]["sha256"] == sha(PNG_A)
    assert dict(parts[2]["headers"])["X-Extra"] == "1"
    assert (
        parts[1]["text"] == "blue"
        and dict(parts[1]["headers"])["Content-Type"] == "text/plain; charset=utf-8"
    )


@pytest.mark.parametrize(
    ("parts", "param", "code"),
    [
        ([field("model", "image-prod"), field("prompt", "p")], "image", "missing_required_parameter"),
        (
            [field("model", "image-prod"), file("image", "a.png", PNG_A)],
            "prompt",
            "missing_required_parameter",
        ),
        (
            [field("model", "image-prod"), field("prompt", "p"), field("image", "not a file")],
            "image",
            "invalid_value",
        ),
        (
            [
                field("model", "image-prod"),
                field("prompt", "p"),
                file("image", "a.png", PNG_A),
                field("mask", "x"),
            ],
            "mask",
            "invalid_value",
        ),  # fmt: skip
        (
            [field("model", "image-prod"), field("prompt", "p")]
            + [file("image[]", f"{i}.png", b"x") for i in range(17)],
            "image",
            "invalid_value",
        ),  # fmt: skip
        (
            [
                field("model", "image-prod"),
                field("prompt", "p"),
                field("n", "two"),
                file("image", "a.png", b"x"),
            ],
            "n",
            "invalid_value",
        ),  # fmt: skip
        ([field("prompt", "p"), file("image", "a.png", b"x")], "model", "missing_required_parameter"),
    ],
)
def test_bad_forms_are_400_naming_the_part(edits, fake, parts, param, code):
    app, client = edits
    body, headers = raw_form(*parts)
    assert_envelope(client.post(ROUTE, data=body, headers=headers), 400, "invalid_request_error", code, param)
    assert rows(app)[0]["status"] == 400


@pytest.mark.parametrize("name", ["image", "image[]", "mask"])
def test_a_file_sent_without_a_filename_gets_one_message_whatever_its_bytes(edits, fake, name):
    """A file part needs a filename; without one, binary bytes and text get the same answer, which
    says how to send a file (the binary ones were "not UTF-8 text", the text ones "must be a file")."""
    app, client = edits
    messages = []
    for data in (b"\x89PNG\r\n\x1a\n\xff\xfe", b"plain text"):
        parts = [field("model", "image-prod"), field("prompt", "p"), field(name, data)]
        if name == "mask":
            parts.append(file("image", "a.png", PNG_A))
        body, headers = raw_form(*parts)
        r = client.post(ROUTE, data=body, headers=headers)
        messages.append(assert_envelope(r, 400, "invalid_request_error", "invalid_value", name)["message"])
    hint = f"Must be a file: send it as a part with a filename (curl: -F '{name}=@photo.png')."
    assert messages[0] == messages[1] == f"Invalid value for '{name}': {hint}"
    assert requests.get(f"{fake.url.removesuffix('/v1')}/_calls", timeout=5).json() == []  # nothing sent


@pytest.mark.parametrize(
    "body",
    [
        b'--XyZ-boundary\r\nContent-Disposition: form-data; name="model"\r\n\r\nimage-prod',  # cut short
        b"not multipart at all",
        b"--XyZ-boundary\r\nno-disposition: x\r\n\r\ndata\r\n--XyZ-boundary--\r\n",
    ],
)
def test_a_body_that_is_not_valid_multipart_is_400(edits, body):
    app, client = edits
    r = client.post(
        ROUTE, data=body, headers={**auth(), "Content-Type": "multipart/form-data; boundary=XyZ-boundary"}
    )
    assert_envelope(r, 400, "invalid_request_error", "invalid_multipart")


def test_no_boundary_is_400(edits):
    app, client = edits
    r = client.post(ROUTE, data=b"x", headers={**auth(), "Content-Type": "multipart/form-data"})
    assert_envelope(r, 400, "invalid_request_error", "invalid_multipart")


def test_a_body_over_the_limit_is_413(edits):
    app, client = edits
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", b"x" * 2_100_000)
    )
    assert_envelope(
        client.post(ROUTE, data=body, headers=headers), 413, "invalid_request_error", "request_too_large"
    )


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [("deepseek-image", 400, "unsupported_provider"), ("compat-image", 501, "unsupported_operation")],
)
def test_the_image_routes_provider_rules(edits, model, status, code):
    app, client = edits
    body, headers = raw_form(field("model", model), field("prompt", "p"), file("image", "a.png", b"x"))
    assert client.post(ROUTE, data=body, headers=headers).get_json()["error"]["code"] == code


def test_guardrails_read_the_prompt_and_masked_text_replaces_its_part(make_app, tmp_path, fake):
    config = base_config(tmp_path, fake.url)
    config["guardrails"].append({"name": "pii", "kind": "pii", "action": "mask", "detectors": ["email"]})
    client = make_app(config).test_client()
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "a forbidden phrase"), file("image", "a.png", b"x")
    )
    assert client.post(ROUTE, data=body, headers=headers).status_code == 422
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "for ann@example.com"), file("image", "a.png", PNG_A)
    )
    assert client.post(ROUTE, data=body, headers=headers).status_code == 200
    parts = last_call(fake)["parts"]
    assert parts[1]["text"] == "for [EMAIL_REDACTED]" and parts[2]["sha256"] == sha(PNG_A)


def test_json_references_are_forwarded_as_json(edits, fake):
    app, client = edits
    body = {
        "model": "image-prod",
        "prompt": "p",
        "images": [{"image_url": "https://x.test/a.png"}, {"file_id": "f"}],
    }
    assert client.post(ROUTE, headers=auth(), json=body).status_code == 200
    call = last_call(fake)
    assert call["parts"] is None and call["body"] == {**body, "model": "gpt-image-1"}
    bad = {**body, "images": [{"url": "x"}]}
    assert_envelope(
        client.post(ROUTE, headers=auth(), json=bad), 400, "invalid_request_error", "invalid_value", "images"
    )


def test_an_idempotency_key_replays_a_form_and_refuses_other_bytes(edits, fake):
    app, client = edits
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", PNG_A)
    )
    headers["Idempotency-Key"] = "edit-1"
    first = client.post(ROUTE, data=body, headers=headers)
    again = client.post(ROUTE, data=body, headers=headers)
    assert again.headers["x-aisix-idempotent-replay"] == "true" and again.get_data() == first.get_data()
    other, _ = raw_form(field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", PNG_B))
    assert client.post(ROUTE, data=other, headers=headers).status_code == 422


def test_a_streamed_edit_relays_image_edit_events(edits, fake):
    app, client = edits
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", b"x"),
        field("stream", "true"), field("partial_images", "1"),
    )  # fmt: skip
    r = client.post(ROUTE, data=body, headers=headers, buffered=False)
    events = b"".join(r.response).split(b"\n\n")
    r.close()
    assert [e.split(b"\n")[0] for e in events if e] == [
        b"event: image_edit.partial_image",
        b"event: image_edit.completed",
    ]
    row = rows(app)[0]
    assert (row["status"], row["images"], row["total_tokens"]) == (200, 1, 284)


def test_spooled_parts_are_closed_when_the_call_ends(edits, monkeypatch, nothing_secret_is_logged):
    """Big parts go to temporary files: none is left open after the answer, and neither the ledger
    row nor the access log line keeps any of their bytes."""
    from aisix_flask.proxy import multipart

    opened = []
    real = multipart.Part.__init__

    def tracking(self, *args, **kwargs):
        real(self, *args, **kwargs)
        opened.append(self.body)

    monkeypatch.setattr(multipart.Part, "__init__", tracking)
    app, client = edits
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", io.BytesIO(PNG_B).read())
    )
    r = client.post(ROUTE, data=body, headers=headers)
    assert r.status_code == 200 and r.get_json()["data"][0]["b64_json"] == PNG_1PX
    assert opened and all(f.closed for f in opened)
    [row] = rows(app)
    assert (row["route"], row["model"], row["upstream_model"], row["status"], row["images"]) == (
        ROUTE, "image-prod", "gpt-image-1", 200, 1
    )  # fmt: skip
    logged = [json.loads(line) for line in nothing_secret_is_logged.lines if line.startswith('{"time"')]
    [line] = [e for e in logged if e.get("request_id") == r.headers["x-aisix-request-id"]]
    assert (line["path"], line["status"], line["model"], line["images"]) == (ROUTE, 200, "image-prod", 1)
    # Neither the image sent (70 kB, as base64 or hex) nor the one answered (the fake's b64_json).
    for kept in (json.dumps(row), json.dumps(line)):
        assert len(kept) < 4096  # a 70 kB image, in any encoding, would not fit
        for image in (base64.b64encode(PNG_B).decode()[:32], PNG_B.hex()[:32], PNG_1PX):
            assert image not in kept


def test_a_form_of_too_many_parts_is_413_at_once(edits):
    """Each part costs a spooled file: 150,000 empty ones would hold the worker for seconds."""
    import time

    app, client = edits
    parts = [field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", b"x")]
    body, headers = raw_form(*parts, *(field("x", "") for _ in range(5000)))
    started = time.monotonic()
    r = client.post(ROUTE, data=body, headers=headers)
    error = assert_envelope(r, 413, "invalid_request_error", "request_too_large")
    assert "more than 1000 parts" in error["message"] and time.monotonic() - started < 2


def test_the_same_form_with_another_boundary_is_the_same_request(edits, fake):
    """Clients pick a new boundary for every send (the official one's retries too): a repeat with
    the same Idempotency-Key and the same parts replays."""
    app, client = edits
    parts = (field("model", "image-prod"), field("prompt", "p"), file("image", "a.png", PNG_A))
    first, headers = raw_form(*parts, boundary="one")
    again, headers_again = raw_form(*parts, boundary="two")
    key = {"Idempotency-Key": "edit-boundary"}
    assert client.post(ROUTE, data=first, headers={**headers, **key}).status_code == 200
    replay = client.post(ROUTE, data=again, headers={**headers_again, **key})
    assert replay.headers["x-aisix-idempotent-replay"] == "true"


@pytest.mark.parametrize("n", ["²", "٣", "2.5", "two"])
def test_n_must_be_ascii_digits(edits, n):
    app, client = edits
    body, headers = raw_form(
        field("model", "image-prod"), field("prompt", "p"), field("n", n), file("image", "a.png", b"x")
    )
    assert_envelope(
        client.post(ROUTE, data=body, headers=headers), 400, "invalid_request_error", "invalid_value", "n"
    )


def test_an_empty_file_input_is_no_image(edits):
    """What a browser sends when no file was chosen: filename="" and no bytes."""
    app, client = edits
    body, headers = raw_form(field("model", "image-prod"), field("prompt", "p"), file("image", "", b""))
    r = client.post(ROUTE, data=body, headers=headers)
    assert (
        "no image was sent"
        in assert_envelope(r, 400, "invalid_request_error", "invalid_value", "image")["message"]
    )


def test_a_form_whose_reading_fails_leaves_no_spooled_part_open(edits, monkeypatch):
    """However reading the body ends (a caller gone mid-body, a worker stopping, a bug), the parts
    already spooled are closed."""
    from aisix_flask.proxy import multipart

    opened = []
    real_init, real_decode = multipart.Part.__init__, multipart._decode

    def tracking(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append(self.body)

    def fails_after_the_first_parts(decoder, parts):
        if parts:
            raise RuntimeError("reading the body failed")
        return real_decode(decoder, parts)

    monkeypatch.setattr(multipart.Part, "__init__", tracking)
    monkeypatch.setattr(multipart, "_decode", fails_after_the_first_parts)
    monkeypatch.setattr(multipart, "READ_BYTES", 1024)
    app, client = edits
    body, headers = raw_form(field("model", "image-prod"), file("image", "a.png", PNG_B))
    assert client.post(ROUTE, data=body, headers=headers).status_code == 500
    assert opened and all(f.closed for f in opened)
