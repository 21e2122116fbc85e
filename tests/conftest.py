"""Fixtures: a config per test, the app and its client, a strict ``responses`` upstream."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import responses
import yaml
from responses import matchers
from sqlalchemy import create_engine, text

from aisix_flask import create_app

from .fake_upstream import FakeOpenAI

# Fixtures that live beside the helpers of the tests that share them.
pytest_plugins = ["tests.budgeting", "tests.fuzzing", "tests.routed", "tests.streams", "tests.text_routes"]

UPSTREAM = "https://upstream.test/v1"
IMAGES_URL = f"{UPSTREAM}/images/generations"
CHAT_URL = f"{UPSTREAM}/chat/completions"
EMBEDDINGS_URL = f"{UPSTREAM}/embeddings"
RERANK_URL = f"{UPSTREAM}/rerank"
# Distinctive secrets: tests assert they never show up in answers or the ledger.
UPSTREAM_KEY = "sk-upstream-SECRET-7f3a9c"
CALLER_KEY = "caller-SECRET-91b2e4"
LIMITED_KEY = "limited-SECRET-0d77aa"
DISABLED_KEY = "disabled-SECRET-5e2c10"
EXPIRED_KEY = "expired-SECRET-c3f8b2"
ADMIN_KEY = "admin-SECRET-55c1d9"
SECRETS = (UPSTREAM_KEY, CALLER_KEY, LIMITED_KEY, DISABLED_KEY, EXPIRED_KEY, ADMIN_KEY)


def sha(secret: str) -> str:
    """The key_hash of ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


class _Recorder(logging.Handler):
    """Keeps every formatted log line of the session."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def nothing_secret_is_logged():
    """Whatever the gateway logged during the suite, in this process or in any gunicorn it
    started, holds no caller or upstream key and no image data."""
    from . import integration, serving
    from .fake_upstream import PNG_1PX

    recorder = _Recorder()
    loggers = [logging.getLogger(), logging.getLogger("aisix_flask")]
    loggers += [logging.getLogger("aisix_flask.access"), logging.getLogger("aisix_flask.events")]
    for logger in loggers:
        logger.addHandler(recorder)
    yield recorder
    for logger in loggers:
        logger.removeHandler(recorder)
    forbidden = [*SECRETS, *integration.SECRETS, PNG_1PX, "aGVsbG8=", "d29ybGQ="]
    texts = [("in-process log", "\n".join(recorder.lines))]
    texts += [(str(path), path.read_text(errors="replace")) for path in serving.LOGS if path.exists()]
    for where, logged in texts:
        for secret in forbidden:
            assert secret not in logged, f"{where} contains {secret[:12]}…"


POSTGRES = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_schema():
    """A schema of its own in the machine's PostgreSQL (database ``test``), dropped afterwards."""
    name = f"aisix_{uuid.uuid4().hex[:10]}"
    engine = create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # .ci/run starts PostgreSQL when it is down
        conn.execute(text(f"CREATE SCHEMA {name}"))
    yield f"{POSTGRES}?options=-csearch_path%3D{name}"
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
    engine.dispose()


def base_config(tmp_path: Path, upstream: str = UPSTREAM) -> dict[str, Any]:
    """A config that exercises every row of the request path."""
    return {
        "gateway": {
            "upstream": {"connect_timeout_s": 5, "timeout_s": 300},
            "usage": {"database_url": f"sqlite:///{tmp_path}/usage.db", "journal": f"{tmp_path}/journal.db"},
            "ratelimit": {"storage_url": f"sqlite:///{tmp_path}/ratelimit.db"},
            "admin_keys": [{"display_name": "admin", "key_hash": sha(ADMIN_KEY)}],
        },
        "provider_keys": [
            {
                "display_name": "openai-main",
                "provider": "openai",
                "api_key": UPSTREAM_KEY,
                "api_base": upstream,
            },
            {
                "display_name": "compat",
                "provider": "openai",
                "adapter": "openai-compatible",
                "api_key": "sk-compat",
                "api_base": upstream,
            },
            {"display_name": "deepseek", "provider": "deepseek", "api_key": "sk-ds", "api_base": upstream},
            {"display_name": "no-key", "provider": "openai", "api_key": "", "api_base": upstream},
            {"display_name": "jina", "provider": "jina", "api_key": "jina-key", "api_base": upstream},
        ],
        "models": [
            {
                "display_name": "image-prod",
                "provider": "openai",
                "model_name": "gpt-image-1",
                "provider_key": "openai-main",
            },
            {
                "display_name": "dalle",
                "provider": "openai",
                "model_name": "dall-e-3",
                "provider_key": "openai-main",
            },
            {
                "display_name": "openai/*",
                "provider": "openai",
                "model_name": "*",
                "provider_key": "openai-main",
            },
            {
                "display_name": "quick",
                "provider": "openai",
                "model_name": "dall-e-2",
                "provider_key": "openai-main",
                "timeout_s": 1.5,
            },
            {
                "display_name": "compat-image",
                "provider": "openai",
                "model_name": "img",
                "provider_key": "compat",
            },
            {
                "display_name": "deepseek-image",
                "provider": "deepseek",
                "model_name": "ds-img",
                "provider_key": "deepseek",
            },
            {
                "display_name": "keyless",
                "provider": "openai",
                "model_name": "dall-e-3",
                "provider_key": "no-key",
            },
            {
                "display_name": "chat-prod",
                "provider": "openai",
                "model_name": "gpt-4o-mini",
                "provider_key": "openai-main",
            },
            {
                "display_name": "deepseek-chat",
                "provider": "deepseek",
                "model_name": "deepseek-chat",
                "provider_key": "deepseek",
            },
            {
                "display_name": "embed",
                "provider": "openai",
                "model_name": "text-embedding-3-small",
                "provider_key": "openai-main",
            },
            {
                "display_name": "reranker",
                "provider": "jina",
                "model_name": "jina-reranker-v2-base-multilingual",
                "provider_key": "jina",
            },
        ],
        "api_keys": [
            {"display_name": "dev", "key_hash": sha(CALLER_KEY)},
            {"display_name": "limited", "key_hash": sha(LIMITED_KEY), "allowed_models": ["dall*"]},
            {"display_name": "off", "key_hash": sha(DISABLED_KEY), "disabled": True},
            {"display_name": "old", "key_hash": sha(EXPIRED_KEY), "expires_at": "2020-01-01T00:00:00Z"},
        ],
        "guardrails": [
            {
                "name": "no-secrets",
                "kind": "keyword",
                "patterns": [
                    {"kind": "literal", "value": "Forbidden Phrase"},
                    {"kind": "regex", "value": "(?i)password\\s*="},
                ],
            }
        ],
    }


def named(config: dict[str, Any], collection: str, name: str) -> dict[str, Any]:
    """The row of ``config[collection]`` called ``name`` (its display_name, a guardrail's name): tests
    edit a row by what it is, so that reordering the config cannot change which row they edit."""
    [row] = [r for r in config[collection] if r.get("display_name", r.get("name")) == name]
    return row


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML and return its path."""
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def config(tmp_path):
    """A fresh copy of the base config, for tests that build their own app."""
    return copy.deepcopy(base_config(tmp_path))


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """Build an app from a config dict; ledgers are closed at teardown. In-process tests read
    the ledger right after a request, so its writer does not wait for more rows."""
    from aisix_flask.usage.ledger import Ledger

    monkeypatch.setattr(Ledger, "linger_s", 0.0)
    apps = []

    def make(config: dict[str, Any]):
        path = write_config(tmp_path / f"config-{len(apps)}.yaml", config)
        app = create_app({"TESTING": True, "AISIX_CONFIG": str(path)})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["aisix"].close()


@pytest.fixture
def app(make_app, config):
    return make_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def upstream():
    """The fake upstream: every registered answer must be used, and nothing else is reachable."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture(scope="session")
def fake():
    """The loopback fake OpenAI upstream the integration tests' gunicorn talks to."""
    server = FakeOpenAI().start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def ledger_rows(app):
    """Read the ledger (after the writer thread caught up), oldest first."""

    def rows() -> list[dict[str, Any]]:
        ledger = app.extensions["aisix"].ledger
        assert ledger.flush(10)
        return list(reversed(ledger.query(limit=1000)))

    return rows


def away_from_a_minute_boundary() -> None:
    """SQLite windows are aligned to the minute; a burst that straddles a boundary legitimately
    gets a little more through. Tests that count exactly start clear of one."""
    import time

    if time.time() % 60 > 58.5:
        time.sleep(60 - time.time() % 60 + 0.05)


def auth(key: str = CALLER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


URL_ANSWER = {"created": 1710000000, "data": [{"url": "https://example.com/generated-image.png"}]}


def expect_upstream(upstream, sent: dict, *, status: int = 200, answer=URL_ANSWER, **kwargs):
    """Register one upstream answer that matches only a request whose body is exactly ``sent``."""
    kwargs.setdefault("json", answer)
    return upstream.post(
        IMAGES_URL,
        status=status,
        match=[matchers.json_params_matcher(sent, strict_match=True)],
        **kwargs,
    )


def assert_envelope(response, status: int, type_: str, code: str | None, param: str | None = None):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (type_, code, param)
    assert isinstance(error["message"], str) and error["message"]
    assert_no_secret(response)
    return error


def assert_no_secret(response):
    text = response.get_data(as_text=True) + json.dumps(dict(response.headers))
    for secret in SECRETS:
        assert secret not in text


def hold_slot(app, ttl_s: float = 60.0):
    """Another request of caller key 'dev' in flight: its one concurrency slot taken (give it back
    with ``app.extensions["aisix"].limiter.finish(admission)``)."""
    from aisix_flask.config.resources import RateLimit
    from aisix_flask.policy.limits import Scope

    return app.extensions["aisix"].limiter.admit([Scope("key", "dev", RateLimit(concurrency=1))], ttl_s)


@pytest.fixture
def event_lines():
    """The gateway's event lines (aisix_flask.events: a store away, and back), as parsed JSON."""
    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(record.getMessage()))

    handler = Keep()
    logging.getLogger("aisix_flask.events").addHandler(handler)
    yield lines
    logging.getLogger("aisix_flask.events").removeHandler(handler)
