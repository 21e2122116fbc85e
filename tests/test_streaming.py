"""Streamed chat completions, in-process against the real loopback fake upstream (a socket)."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import CALLER_KEY, assert_envelope, auth, base_config, named
from .streams import ROUTE, chat, events, fake_calls, ledger_row, payloads


def test_a_stream_is_relayed_with_usage_asked_for_and_not_shown(streaming, fake):
    app, client = streaming
    r = chat(client, "[say:one two three]")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    got = payloads(r)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "one two three"
    assert all(c["choices"] for c in chunks)  # the usage-only chunk the gateway asked for is not relayed
    assert all("usage" not in c for c in chunks)  # nor the "usage": null it adds to every chunk
    [call] = fake_calls(fake)
    assert call["body"]["stream_options"] == {"include_usage": True}
    assert call["body"]["model"] == "gpt-4o-mini"
    row = ledger_row(app)
    assert (row["status"], row["error_code"]) == (200, None)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (10, 3, 13)


def test_a_caller_that_asked_for_usage_gets_it(streaming):
    app, client = streaming
    got = payloads(chat(client, "[say:a b]", stream_options={"include_usage": True}))
    assert got[-2]["choices"] == [] and got[-2]["usage"]["total_tokens"] == 12
    assert ledger_row(app)["total_tokens"] == 12


def test_the_first_event_arrives_while_the_upstream_is_still_generating(streaming):
    app, client = streaming
    started = time.monotonic()
    r = chat(client, "[gap:0.3][say:a b c d]")
    stream = iter(r.response)
    first = next(stream)
    first_at = time.monotonic() - started
    rest = b"".join(stream)
    total = time.monotonic() - started
    r.close()
    assert b'"role":"assistant"' in first and first_at < 0.25
    assert total >= 1.2 and b"[DONE]" in rest


@pytest.mark.parametrize(
    ("text", "code", "status"),
    [
        ("[cut:2][say:a b c d]", "upstream_stream_interrupted", 502),
        ("[reset:2][say:a b c d]", "upstream_stream_interrupted", 502),
        ("[no-done][say:a b]", "upstream_stream_interrupted", 502),
    ],
)
def test_a_cut_stream_ends_with_an_error_event_never_a_clean_end(streaming, text, code, status):
    app, client = streaming
    got = payloads(chat(client, text))
    assert "[DONE]" not in got
    assert got[-1]["error"]["code"] == code and got[-1]["error"]["type"] == "upstream_error"
    row = ledger_row(app)
    assert (row["status"], row["error_code"]) == (status, code)


def test_a_silent_upstream_gets_keep_alives_then_a_timeout_event(streaming):
    app, client = streaming
    r = chat(client, "[silent:1][say:a b c]", model="quick-chat")  # timeout_s 1.0, keep-alive 0.2
    sent = events(r)
    assert sent.count(b": keep-alive\n\n") >= 3
    error = json.loads(sent[-1][6:])["error"]
    assert (error["type"], error["code"]) == ("timeout", "upstream_timeout")
    row = ledger_row(app)
    assert (row["status"], row["error_code"]) == (504, "upstream_timeout")


def test_the_upstreams_own_error_event_is_relayed_and_recorded(streaming):
    app, client = streaming
    got = payloads(chat(client, "[error-event][say:a b c]"))
    assert got[-1]["error"]["code"] == "overloaded"
    assert (ledger_row(app)["status"], ledger_row(app)["error_code"]) == (502, "overloaded")


def test_a_caller_that_hangs_up_closes_the_upstream_at_once(streaming, fake):
    app, client = streaming
    r = chat(client, "[gap:0.2][say:" + " ".join(["w"] * 40) + "]")
    stream = iter(r.response)
    next(stream), next(stream)
    r.close()  # what the WSGI server does when the caller has gone
    hung_up = time.time()
    time.sleep(0.6)
    [call] = fake_calls(fake)
    assert call["ended"] == "caller_left" and call["ended_at"] - hung_up < 0.5
    assert call["chunks_sent"] < 10  # it stopped generating
    row = ledger_row(app)
    assert (row["status"], row["error_code"]) == (499, "client_disconnected")


def test_a_streams_slot_is_leased_and_renewed_while_it_runs(make_app, tmp_path, fake, monkeypatch):
    """The concurrency slot of a stream outlives its first lease (1.7 s here: connect 0.3 s + read
    1 s + two 0.2 s keep-alive intervals) because the relay renews it; after the stream, the slot
    is free again."""
    from aisix_flask.proxy import streaming

    monkeypatch.setattr(streaming, "STREAM_SLOT_LEASE_S", 0.4)
    config = base_config(tmp_path, fake.url)
    config["gateway"]["stream_keepalive_s"] = 0.2
    config["gateway"]["upstream"] = {"connect_timeout_s": 0.3, "timeout_s": 1.0}
    chat_prod = next(m for m in config["models"] if m["display_name"] == "chat-prod")
    chat_prod["rate_limit"] = {"concurrency": 1}
    client = make_app(config).test_client()
    started = time.monotonic()
    stream = chat(client, "[gap:0.3][say:one two three four five six seven eight nine ten]")
    pieces = iter(stream.response)
    while time.monotonic() - started < 2.3:  # the relay runs (and renews) as the events are read
        next(pieces)
    hello = {"model": "chat-prod", "messages": [{"role": "user", "content": "hi"}]}
    second = client.post(ROUTE, headers=auth(), json=hello)
    rest = b"".join(pieces)  # the stream read to its end and closed before anything is asserted
    stream.close()
    assert_envelope(second, 429, "rate_limit_error", "rate_limit_exceeded")
    assert b"[DONE]" in rest
    assert client.post(ROUTE, headers=auth(), json=hello).status_code == 200


def test_a_streams_lease_covers_the_wait_for_the_upstreams_headers():
    """Renewal starts once the relay runs: until then the upstream may take the connect and read
    timeouts, and a write to a slow caller may block for the read timeout."""
    from aisix_flask.proxy.streaming import stream_slot_lease
    from aisix_flask.proxy.upstream import Timeout

    assert stream_slot_lease(15, Timeout(5, 300)) == 5 + 300 + 30
    assert stream_slot_lease(15, Timeout(1, 10)) == 120  # at least two minutes
    assert stream_slot_lease(60, Timeout(1, 10)) == 240  # four keep-alive intervals


def test_output_guardrails_end_the_stream_before_the_matching_chunk(streaming):
    app, client = streaming
    got = payloads(chat(client, "[say:the launch code is 1234]"))
    relayed = "".join(c["choices"][0]["delta"].get("content", "") for c in got if "choices" in c)
    assert "code" not in relayed and relayed.startswith("the launch")
    assert (got[-1]["error"]["code"], got[-1]["error"]["type"]) == (
        "content_policy_violation",
        "content_filter",
    )
    row = ledger_row(app)
    assert (row["status"], row["error_code"]) == (422, "content_policy_violation")


def test_output_guardrails_read_a_streamed_tool_calls_arguments(streaming):
    """The match spans two argument fragments; the one that completes it is not relayed."""
    app, client = streaming
    got = payloads(chat(client, "[tool][say:the launch code is 1234]"))
    fragments = [
        call["function"].get("arguments", "")
        for c in got
        if "choices" in c
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert "".join(fragments) == "the launch "
    assert got[-1]["error"]["code"] == "content_policy_violation"
    assert ledger_row(app)["error_code"] == "content_policy_violation"


def test_output_guardrails_read_a_whole_answers_tool_calls(streaming):
    app, client = streaming
    body = {"model": "chat-prod", "messages": [{"role": "user", "content": "[tool][say:my launch code]"}]}
    assert_envelope(
        client.post(ROUTE, headers=auth(), json=body), 422, "content_filter", "content_policy_violation"
    )
    body["messages"][0]["content"] = "[tool][say:nothing to see]"
    r = client.post(ROUTE, headers=auth(), json=body)
    assert r.status_code == 200 and r.json["choices"][0]["message"]["tool_calls"][0]["function"][
        "arguments"
    ] == ("nothing to see")


def test_output_guardrails_on_a_whole_answer_are_a_422_that_is_recorded(streaming):
    app, client = streaming
    body = {"model": "chat-prod", "messages": [{"role": "user", "content": "[say:my launch code]"}]}
    r = client.post(ROUTE, headers=auth(), json=body)
    error = assert_envelope(r, 422, "content_filter", "content_policy_violation")
    assert "no-launch-codes" in error["message"] and "launch" not in error["message"].split("'")[0]
    row = ledger_row(app)
    assert (row["status"], row["total_tokens"]) == (422, 13)  # the upstream answered: its tokens count


def test_an_idempotency_key_with_a_stream_is_400(streaming, fake):
    app, client = streaming
    body = {"model": "chat-prod", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = client.post(ROUTE, headers={**auth(), "Idempotency-Key": "k1"}, json=body)
    assert_envelope(r, 400, "invalid_request_error", "invalid_value", "Idempotency-Key")
    assert fake_calls(fake) == []


def test_before_the_first_byte_a_stream_fails_like_a_plain_request(streaming):
    app, client = streaming
    r = chat(client, "[status:503]")
    assert_envelope(r, 502, "upstream_error", "upstream_server_error")
    r = chat(client, "hi", model="nope")
    assert_envelope(r, 404, "invalid_request_error", "model_not_found", "model")


def test_an_upstream_that_answers_json_to_a_stream_is_passed_through(streaming):
    app, client = streaming
    r = chat(client, "[json][say:whole]")
    assert r.status_code == 200 and r.get_json()["choices"][0]["message"]["content"] == "whole"
    assert ledger_row(app)["total_tokens"] == 11


def test_a_stream_releases_its_concurrency_slot_when_it_ends(make_app, tmp_path, fake):
    config = base_config(tmp_path, fake.url)
    named(config, "api_keys", "dev")["rate_limit"] = {"concurrency": 1}
    client = make_app(config).test_client()
    r = chat(client, "[gap:0.1][say:a b c]")
    stream = iter(r.response)
    next(stream)
    assert chat(client, "x").status_code == 429  # held while it runs
    b"".join(stream)
    r.close()
    ok = chat(client, "[say:again]")
    assert ok.status_code == 200
    ok.close()
    assert CALLER_KEY not in json.dumps(fake_calls(fake))


@pytest.mark.parametrize("framing", ["[close]", "[http10]", "[deflate]", "[close][deflate]"])
def test_streams_framed_or_coded_otherwise_are_relayed(streaming, framing):
    """Connection: close (http.client then hands the socket to the response), a body that ends at the
    close, and raw deflate (no zlib header) as some servers send it."""
    app, client = streaming
    got = payloads(chat(client, f"{framing}[say:one two]"))
    assert got[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in got[:-1]) == "one two"
    assert ledger_row(app)["status"] == 200


def test_a_bug_in_the_relay_ends_with_an_error_event_not_a_clean_end(streaming, monkeypatch):
    from aisix_flask.usage.row import UsageRow

    def broken(row, usage):
        raise RuntimeError("bug")

    monkeypatch.setattr(UsageRow, "note_usage", broken)  # when the usage chunk arrives
    app, client = streaming
    got = payloads(chat(client, "[say:a b]"))
    assert got[-1]["error"]["code"] == "internal_error" and "bug" not in json.dumps(got[-1])
    row = ledger_row(app)
    assert (row["status"], row["error_code"]) == (500, "internal_error")


def test_a_usage_null_key_is_removed_wherever_it_stands():
    from aisix_flask.proxy.streaming import _USAGE_NULL

    for raw, clean in [
        (b'data: {"id":"x","usage":null}\n\n', b'data: {"id":"x"}\n\n'),
        (b'data: {"usage":null,"id":"x"}\n\n', b'data: {"id":"x"}\n\n'),
        (b'data: {"id":"x", "usage": null, "c":1}\n\n', b'data: {"id":"x", "c":1}\n\n'),
        (b'data: {"t":"\\"usage\\":null,"}\n\n', b'data: {"t":"\\"usage\\":null,"}\n\n'),  # inside a string
    ]:
        assert _USAGE_NULL.sub(b"", raw) == clean


def test_a_clean_stream_gives_its_connection_back_and_a_cut_one_does_not(streaming, fake):
    """A stream read to its end leaves the connection reusable (no new connect, nor TLS handshake,
    for the next call); one that ended early is closed."""
    app, client = streaming
    for text in ("[say:a]", "[say:b]", "[cut:1][say:c d]", "[say:e]"):
        events(chat(client, text))
    ports = [call["port"] for call in fake_calls(fake)]
    assert ports[0] == ports[1] == ports[2] != ports[3]
