"""x-should-retry on every error answer: true only where a retry can help and nothing was billed."""

from __future__ import annotations

import openai
import pytest
import requests
from urllib3.exceptions import NewConnectionError

from .conftest import DISABLED_KEY, LIMITED_KEY, auth, expect_upstream, hold_slot, named
from .integration import DEV_KEY, ENV, gateway_config
from .serving import Gunicorn

ROUTE = "/v1/images/generations"
OK = {"model": "image-prod", "prompt": "p"}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, OK, 401),
        (auth(DISABLED_KEY), OK, 401),
        (auth(), b"{not json", 400),
        (auth(), {"model": "image-prod"}, 400),
        (auth(), {"model": "nope", "prompt": "p"}, 404),
        (auth(LIMITED_KEY), OK, 403),
        (auth(), {"model": "deepseek-image", "prompt": "p"}, 400),
        (auth(), {"model": "compat-image", "prompt": "p"}, 501),
        (auth(), {"model": "keyless", "prompt": "p"}, 503),
        (auth(), {"model": "image-prod", "prompt": "forbidden phrase"}, 422),
    ],
)
def test_the_gateways_own_refusals_say_do_not_retry(client, headers, body, status):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(ROUTE, headers=headers, **kwargs)
    assert (r.status_code, r.headers["x-should-retry"]) == (status, "false")


def test_our_rate_limit_says_retry(make_app, config):
    named(config, "api_keys", "dev")["rate_limit"] = {"concurrency": 1}
    app = make_app(config)
    hold_slot(app)
    r = app.test_client().post(ROUTE, headers=auth(), json=OK)
    assert (r.status_code, r.headers["x-should-retry"]) == (429, "true")
    assert r.headers["Retry-After"]


def refused() -> requests.ConnectionError:
    return requests.ConnectionError(NewConnectionError(None, "Failed to establish a new connection: refused"))


@pytest.mark.parametrize(
    ("answer", "status", "retry"),
    [
        ({"status": 500, "json": {"error": {"message": "x"}}}, 502, "false"),  # may have generated
        ({"status": 401, "json": {"error": {"message": "x"}}}, 502, "false"),
        ({"status": 302, "body": ""}, 502, "false"),
        ({"status": 200, "body": "<html>"}, 502, "false"),
        ({"status": 400, "json": {"error": {"message": "x", "code": "bad"}}}, 400, "false"),
        ({"status": 404, "body": "<h1>nope</h1>"}, 404, "false"),
        (
            {"status": 429, "json": {"error": {"message": "slow down"}}, "headers": {"Retry-After": "3"}},
            429,
            "true",
        ),
        ({"body": requests.exceptions.ReadTimeout("slow")}, 504, "false"),  # sent; may be generating
        ({"body": requests.exceptions.ChunkedEncodingError("reset")}, 502, "false"),  # lost after sending
        ({"body": requests.exceptions.ConnectTimeout("no route")}, 504, "true"),  # never connected
        ({"body": refused()}, 502, "true"),  # never connected
    ],
)
def test_upstream_outcomes(client, upstream, answer, status, retry):
    answer.setdefault("json", None)
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p"}, **answer)
    r = client.post(ROUTE, headers=auth(), json=OK)
    assert (r.status_code, r.headers["x-should-retry"]) == (status, retry), r.get_data(as_text=True)


def test_success_and_http_errors(client, upstream):
    expect_upstream(upstream, {"model": "gpt-image-1", "prompt": "p"})
    assert "x-should-retry" not in client.post(ROUTE, headers=auth(), json=OK).headers
    assert client.get("/nope").headers["x-should-retry"] == "false"
    assert client.get(ROUTE).headers["x-should-retry"] == "false"


def test_the_openai_client_does_not_retry_a_timed_out_generation(tmp_path, fake):
    """At its default max_retries (2) the official client obeys x-should-retry: false."""
    server = Gunicorn(gateway_config(tmp_path, fake), workers=1, threads=4, env=ENV)
    prompt = f"[sleep:3] billed once {tmp_path.name}"
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=DEV_KEY)  # max_retries=2
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(model="dalle", prompt=prompt)  # dalle's timeout_s is 2
        client.close()
    finally:
        server.stop()
    assert info.value.status_code == 504
    sent = [
        c
        for c in requests.get(f"{fake.url[:-3]}/_calls", timeout=5).json()
        if c["body"].get("prompt") == prompt
    ]
    assert len(sent) == 1
