"""PII guardrails: each detector, no false positives on prose, and mask / block / monitor."""

from __future__ import annotations

import pytest
from responses import matchers

from aisix_flask.policy import pii

from .conftest import IMAGES_URL, auth, named

ROUTE = "/v1/images/generations"

POSITIVE = {
    "email": ["john.doe+tag@example.co.uk", "a@b.io", "First.Last@sub.domain.org"],
    "phone": [
        "+1 415 555 2671",
        "+44 20 7946 0958",
        "+491701234567",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
    ],
    "credit_card": ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500005555555559", "378282246310005"],
    "us_ssn": ["123-45-6789", "078-05-1120"],
    "ip_address": ["192.168.1.20", "8.8.8.8", "2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a"],
    "api_key": [
        "sk-proj-abcdefghijklmnopqrstuvwx12",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1" * 18,
        "xoxb-123456789012-abcdefABCDEF",
        "AIza" + "B" * 35,
        "-----BEGIN RSA PRIVATE KEY-----",
    ],
}
NEGATIVE = {
    "email": ["user at example dot com", "@handle", "a@b"],
    "phone": ["5551234567", "2024-2025", "1,000,000", "call ext. 1234", "ISBN 978-3-16-148410-0"],
    "credit_card": [
        "4111 1111 1111 1112",
        "1234 5678 9012 3456",
        "order 123456789012",
        "0000 0000 0000 0000",
    ],
    "us_ssn": ["123456789", "000-12-3456", "666-12-3456", "123-00-4567", "2024-01-15"],
    "ip_address": ["10.0.0.256", "1.2.3.4.5", "version 1.2.3", "12:30:45", "ratio 3:2"],
    "api_key": ["sk-short", "task-force-alpha-bravo-charlie", "skeleton key", "AKIA-not-a-key"],
}
PROSE = (
    "In 2024 we sold 1,000,000 units at $19.99 (order 123456789012, SKU 4-5511-0921). Version 1.2.3 "
    "shipped on 2024-01-15 at 12:30:45; the ratio was 3:2 and the ISBN is 978-3-16-148410-0. "
    "Call extension 1234, room 221B, or see chapter 7.3.1 of the ask-sk-manual for a task-force."
)


@pytest.mark.parametrize(("name", "text"), [(n, t) for n, texts in POSITIVE.items() for t in texts])
def test_detector_finds(name, text):
    masked, count = pii.mask(f"see {text} now", pii.builtin([name]))
    assert (masked, count) == (f"see [{name.upper()}_REDACTED] now", 1)


@pytest.mark.parametrize(("name", "text"), [(n, t) for n, texts in NEGATIVE.items() for t in texts])
def test_detector_ignores(name, text):
    assert not pii.detect(text, pii.builtin([name]))


def test_no_false_positives_on_prose():
    assert pii.mask(PROSE, pii.builtin(pii.NAMES)) == (PROSE, 0)


def test_overlapping_matches_mask_once():
    assert pii.mask("x 4111-1111-1111-1111 y", pii.builtin(["credit_card", "phone"])) == (
        "x [CREDIT_CARD_REDACTED] y",
        1,
    )


@pytest.fixture
def pii_app(make_app, config):
    def build(**guardrail):
        config["guardrails"] = [{"name": "pii", "kind": "pii", **guardrail}]
        return make_app(config)

    return build


def send(app, prompt: str):
    return app.test_client().post(
        ROUTE, headers=auth(), json={"model": "image-prod", "prompt": prompt, "n": 1}
    )


def last_row(app) -> dict:
    ledger = app.extensions["aisix"].ledger
    ledger.flush(10)
    return ledger.query(limit=1)[0]


PROMPT = "Portrait for jane@example.com, card 4111 1111 1111 1111, employee EMP-123456"


def test_mask_rewrites_the_prompt_before_forwarding(pii_app, upstream):
    app = pii_app(action="mask", custom_patterns=[{"name": "employee id", "pattern": r"EMP-\d{6}"}])
    sent = "Portrait for [EMAIL_REDACTED], card [CREDIT_CARD_REDACTED], employee [EMPLOYEE_ID_REDACTED]"
    upstream.post(
        IMAGES_URL,
        json={"created": 1, "data": [{"url": "u"}]},
        match=[
            matchers.json_params_matcher({"model": "gpt-image-1", "prompt": sent, "n": 1}, strict_match=True)
        ],
    )
    assert send(app, PROMPT).status_code == 200
    row = last_row(app)
    assert (row["pii_masked"], row["guardrails_flagged"]) == (3, None)


def test_block_is_422_without_echo(pii_app, upstream):
    app = pii_app(action="block", detectors=["email"])
    r = send(app, PROMPT)
    assert r.status_code == 422
    assert r.get_json()["error"]["code"] == "content_policy_violation"
    assert "'pii'" in r.get_json()["error"]["message"]
    assert "jane" not in r.get_data(as_text=True)
    assert not upstream.calls


def test_only_configured_detectors_run(pii_app, upstream):
    app = pii_app(action="block", detectors=["us_ssn"])
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    assert send(app, PROMPT).status_code == 200


@pytest.mark.parametrize("action", ["block", "mask"])
def test_monitor_records_without_acting(pii_app, upstream, action):
    app = pii_app(action=action, enforcement_mode="monitor")
    upstream.post(
        IMAGES_URL,
        json={"created": 1, "data": [{"url": "u"}]},
        match=[
            matchers.json_params_matcher(
                {"model": "gpt-image-1", "prompt": PROMPT, "n": 1}, strict_match=True
            )
        ],
    )
    assert send(app, PROMPT).status_code == 200
    row = last_row(app)
    assert (row["pii_masked"], row["guardrails_flagged"]) == (0, "pii")


def test_keyword_guardrail_in_monitor_mode(make_app, config, upstream):
    named(config, "guardrails", "no-secrets")["enforcement_mode"] = "monitor"
    app = make_app(config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    assert send(app, "a forbidden phrase").status_code == 200
    assert last_row(app)["guardrails_flagged"] == "no-secrets"


def test_masking_runs_before_later_guardrails(make_app, config, upstream):
    """A mask guardrail first, then a keyword guardrail that would block the raw address."""
    config["guardrails"] = [
        {"name": "pii", "kind": "pii", "action": "mask", "detectors": ["email"]},
        {"name": "no-example", "kind": "keyword", "patterns": [{"kind": "literal", "value": "example.com"}]},
    ]
    app = make_app(config)
    upstream.post(IMAGES_URL, json={"created": 1, "data": [{"url": "u"}]})
    assert send(app, "for jane@example.com").status_code == 200


def test_the_config_names_exactly_the_builtin_detectors():
    from aisix_flask.config.resources import PII_DETECTORS

    assert pii.NAMES == PII_DETECTORS
