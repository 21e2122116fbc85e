"""Chat completions: what is checked, what the guardrails read and put back, what is recorded."""

from __future__ import annotations

import json

import pytest

from .conftest import CHAT_URL, assert_envelope, auth, named

ROUTE = "/v1/chat/completions"
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}  # fmt: skip


def post(client, messages, **extra):
    return client.post(ROUTE, headers=auth(), json={"model": "chat-prod", "messages": messages, **extra})


@pytest.mark.parametrize(
    ("messages", "detail"),
    [
        ([], "Shorter than minimum length 1"),
        ("hi", "Not a valid list"),
        ([{"content": "hi"}], "'role'"),
        ([{"role": 7, "content": "hi"}], "'role'"),
        (["hi"], "item 0"),
        ([{"role": "user", "content": 5}], "a string, an array of content parts or null"),
        ([{"role": "user", "content": ["not a part"]}], "a string, an array of content parts or null"),
    ],
)
def test_bad_messages_are_400_naming_messages(client, upstream, messages, detail):
    error = assert_envelope(post(client, messages), 400, "invalid_request_error", "invalid_value", "messages")
    assert detail in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", "yes"),
        ("n", 1.5),
        ("temperature", "hot"),
        ("stop", [1]),
        ("stream_options", True),
        ("tools", {}),
    ],
)
def test_known_fields_are_type_checked(client, upstream, field, value):
    r = post(client, [{"role": "user", "content": "hi"}], **{field: value})
    assert_envelope(r, 400, "invalid_request_error", "invalid_value", field)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "system", "content": "a forbidden phrase"},
        {"role": "assistant", "content": "a forbidden phrase"},
        {"role": "tool", "content": "a forbidden phrase", "tool_call_id": "t"},
        {"role": "assistant", "content": None, "refusal": "a forbidden phrase"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "t",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"q": "a forbidden phrase"}'},
                }
            ],
        },  # fmt: skip
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "f", "arguments": "forbidden phrase"},
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "u"}},
                {"type": "text", "text": "a forbidden phrase"},
            ],
        },  # fmt: skip
    ],
)
def test_input_guardrails_read_every_role_and_text_parts(client, upstream, message):
    r = post(client, [{"role": "user", "content": "hello"}, message])
    assert_envelope(r, 422, "content_filter", "content_policy_violation")


def test_masked_text_goes_back_where_it_was(make_app, config, upstream):
    config["guardrails"].append({"name": "pii", "kind": "pii", "action": "mask", "detectors": ["email"]})
    client = make_app(config).test_client()
    upstream.post(CHAT_URL, json=ANSWER)
    messages = [
        {"role": "system", "content": "write to ops@example.com"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "me: a@b.io"},
                {"type": "image_url", "image_url": {"url": "u"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "u",
                    "type": "function",
                    "function": {"name": "mail", "arguments": '{"to": "x@y.io"}'},
                },
                "not a call",
            ],
        },
    ]
    assert post(client, messages).status_code == 200
    sent = json.loads(upstream.calls[0].request.body)["messages"]
    assert sent[0]["content"] == "write to [EMAIL_REDACTED]"
    assert sent[1]["content"] == [{"type": "text", "text": "me: [EMAIL_REDACTED]"}, messages[1]["content"][1]]
    assert sent[2] == messages[2]  # nothing to read in it: sent as it came
    assert sent[3]["tool_calls"][0]["function"] == {"name": "mail", "arguments": '{"to": "[EMAIL_REDACTED]"}'}
    assert sent[3]["tool_calls"][1] == "not a call"


def test_masking_reads_tool_call_arguments_as_json_and_keeps_them_json(make_app, config, upstream):
    """The value after a JSON escape ("\\n") is what the detector reads; the masked arguments still
    parse. A refusal and a legacy function_call are masked in place too."""
    config["guardrails"].append({"name": "pii", "kind": "pii", "action": "mask", "detectors": ["email"]})
    client = make_app(config).test_client()
    upstream.post(CHAT_URL, json=ANSWER)
    arguments = json.dumps({"body": "Contact:\njohn@example.com", "n": 2, "cc": ["a@b.io"]})
    call = {"id": "t", "type": "function", "function": {"name": "mail", "arguments": arguments}}
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "assistant", "content": None, "refusal": "ask ops@example.com"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "to x@y.io"}},
        {"role": "user", "content": "hi"},
    ]  # fmt: skip
    assert post(client, messages).status_code == 200
    sent = json.loads(upstream.calls[0].request.body)["messages"]
    assert json.loads(sent[0]["tool_calls"][0]["function"]["arguments"]) == {
        "body": "Contact:\n[EMAIL_REDACTED]",
        "n": 2,
        "cc": ["[EMAIL_REDACTED]"],
    }
    assert sent[1]["refusal"] == "ask [EMAIL_REDACTED]"
    assert sent[2]["function_call"] == {"name": "f", "arguments": "to [EMAIL_REDACTED]"}


def test_an_answer_of_any_shape_is_read_by_output_guardrails_without_failing(make_app, config, upstream):
    named(config, "guardrails", "no-secrets")["hook_point"] = "both"
    client = make_app(config).test_client()
    odd = {"role": "assistant", "content": ["not a part", {"type": "text", "text": "fine"}],
           "tool_calls": [None, {"function": {"arguments": 5}}, {"function": "x"}], "refusal": 7}  # fmt: skip
    upstream.post(CHAT_URL, json={**ANSWER, "choices": [{"index": 0, "message": odd}, "not a choice"]})
    assert post(client, [{"role": "user", "content": "hi"}]).status_code == 200


def test_output_guardrails_in_monitor_mode_only_flag(make_app, config, upstream):
    patterns = [{"kind": "literal", "value": "ok"}]
    config["guardrails"].append(
        {
            "name": "watch-ok",
            "kind": "keyword",
            "hook_point": "output",
            "enforcement_mode": "monitor",
            "patterns": patterns,
        }
    )
    app = make_app(config)
    upstream.post(CHAT_URL, json=ANSWER)
    assert post(app.test_client(), [{"role": "user", "content": "hi"}]).status_code == 200
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    assert ledger.query()[0]["guardrails_flagged"] == "watch-ok"


def test_an_answer_blocked_by_an_output_guardrail_is_kept_for_its_idempotency_key(make_app, config, upstream):
    """It was generated and billed: a retry with the same key gets the same 422, no second call."""
    named(config, "guardrails", "no-secrets")["hook_point"] = "both"
    client = make_app(config).test_client()
    upstream.post(CHAT_URL, json={**ANSWER, "choices": [{"message": {"content": "a Forbidden Phrase"}}]})
    headers = {**auth(), "Idempotency-Key": "blocked-1"}
    body = {"model": "chat-prod", "messages": [{"role": "user", "content": "hi"}]}
    first = client.post(ROUTE, headers=headers, json=body)
    again = client.post(ROUTE, headers=headers, json=body)
    assert first.status_code == again.status_code == 422
    assert again.headers["x-aisix-idempotent-replay"] == "true" and len(upstream.calls) == 1
    ledger = client.application.extensions["aisix"].ledger
    ledger.flush(10)
    assert [r["error_code"] for r in ledger.query()] == ["content_policy_violation"] * 2
