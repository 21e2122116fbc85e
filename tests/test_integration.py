"""The real gunicorn against a loopback fake OpenAI upstream, driven by curl, requests and openai."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from .integration import (
    DEV_KEY,
    ENV,
    LIMITED_KEY,
    LOAD_KEY,
    SECRETS,
    UPSTREAM_KEY,
    gateway_config,
    usage_rows,
)
from .serving import Gunicorn, generate


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake):
    tmp_path = tmp_path_factory.mktemp("gateway")
    config = gateway_config(tmp_path, fake)
    server = Gunicorn(config, workers=4, threads=8, env=ENV)
    yield server
    assert server.stop() == 0
    log = server.log.read_text()
    for secret in SECRETS:
        assert secret not in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    assert any(e["path"] == "/v1/images/generations" and e["api_key"] == "dev" for e in access)


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=DEV_KEY, max_retries=0) as c:
        yield c


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_seed_curl_and_jq_verbatim(gateway, fake, tmp_path):
    command = f"""curl -sS -X POST "{gateway.url}/v1/images/generations" \\
-H "Authorization: Bearer {DEV_KEY}" \\
-H "Content-Type: application/json" \\
-d '{{
"model": "image-prod",
"prompt": "A minimal illustration of an AI gateway"
}}' \\
-o aisix-image-response.json"""
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=30)
    document = json.loads((tmp_path / "aisix-image-response.json").read_text())
    assert document["data"][0]["b64_json"]
    assert document["usage"]["total_tokens"] == 284
    jq = subprocess.run(
        "jq '.data | length' aisix-image-response.json",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert jq.stdout == "1\n"


def test_upstream_sees_only_the_rewritten_model_and_its_own_key(gateway, fake):
    body = {
        "model": "dalle",
        "prompt": "a fox",
        "size": "1024x1024",
        "style": "vivid",
        "brand_new_field": [1, {"a": None}],
    }
    r = requests.post(
        f"{gateway.url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {DEV_KEY}", "Cookie": "a=b", "x-request-id": "it-trace-1"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["x-aisix-request-id"] == "it-trace-1"
    [call] = [
        c
        for c in requests.get(f"{fake.url[:-3]}/_calls", timeout=5).json()
        if c["body"].get("prompt") == "a fox"
    ]
    assert call["body"] == {**body, "model": "dall-e-3"}
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert headers["x-request-id"] == "it-trace-1"
    assert headers["user-agent"].startswith("aisix-flask/")
    assert "cookie" not in headers and DEV_KEY not in json.dumps(headers)


def test_openai_client_generates(client):
    image = client.images.generate(
        model="image-prod", prompt="a lighthouse", n=2, size="1024x1024", quality="low"
    )
    assert len(image.data) == 2 and image.data[0].b64_json
    assert image.usage.total_tokens == 12 + 272 * 2
    image = client.images.generate(model="dalle", prompt="a lighthouse", response_format="url")
    assert image.data[0].url.startswith("https://images.example/")


@pytest.mark.parametrize(
    ("key", "model", "prompt", "exception", "code"),
    [
        ("wrong-key", "image-prod", "p", openai.AuthenticationError, "invalid_api_key"),
        (LIMITED_KEY, "image-prod", "p", openai.PermissionDeniedError, "model_not_allowed"),
        (DEV_KEY, "no-such-model", "p", openai.NotFoundError, "model_not_found"),
        (DEV_KEY, "deepseek-image", "p", openai.BadRequestError, "unsupported_provider"),
        (
            DEV_KEY,
            "image-prod",
            "a forbidden phrase",
            openai.UnprocessableEntityError,
            "content_policy_violation",
        ),
        (DEV_KEY, "compat-image", "p", openai.InternalServerError, "unsupported_operation"),
        (DEV_KEY, "image-prod", "[status:500]", openai.InternalServerError, "upstream_server_error"),
        (DEV_KEY, "dalle", "[sleep:3]", openai.APIStatusError, "upstream_timeout"),
    ],
)
def test_openai_client_sees_matching_exceptions(gateway, key, model, prompt, exception, code):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as c:
        with pytest.raises(exception) as info:
            c.images.generate(model=model, prompt=prompt)
    assert info.value.code == code
    assert info.value.response.headers["x-aisix-request-id"]


def test_two_hundred_concurrent_requests_make_two_hundred_rows(gateway):
    def one(i: int) -> str:
        r = generate(gateway.url, LOAD_KEY, "image-prod" if i % 2 else "dalle", f"image {i}")
        assert r.status_code == 200
        return r.headers["x-aisix-request-id"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        ids = list(pool.map(one, range(200)))
    assert len(set(ids)) == 200
    rows = []
    for _ in range(100):  # rows are written after the answers; give the writers a moment
        rows = usage_rows(gateway, api_key="load")
        if len(rows) >= 200:
            break
        threading.Event().wait(0.1)
    assert len(rows) == 200
    assert {row["request_id"] for row in rows} == set(ids)
    assert sum(row["images"] for row in rows) == 200
    assert sum(row["total_tokens"] for row in rows) == 100 * 284
