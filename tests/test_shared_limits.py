"""Limits hold in total across gunicorn workers (SQLite) and across gateway hosts (Redis)."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from .conftest import away_from_a_minute_boundary
from .integration import ENV, LOAD_KEY, gateway_config
from .serving import Gunicorn, generate

REDIS_URL = "redis://127.0.0.1:6379/14"


def burst(urls: list[str], count: int, prompt: str = "p", parallel: int | None = None) -> Counter:
    """Send ``count`` requests (``parallel`` at a time, default all), spread over ``urls``."""

    def one(i: int) -> int:
        r = generate(urls[i % len(urls)], LOAD_KEY, "dalle", prompt)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
        return r.status_code

    with ThreadPoolExecutor(max_workers=parallel or count) as pool:
        return Counter(pool.map(one, range(count)))


@pytest.fixture
def redis_db():
    connection = redis.Redis.from_url(REDIS_URL)
    connection.ping()  # .ci/run starts Redis when it is down
    yield
    connection.flushdb()
    connection.close()


def test_sqlite_rpm_holds_across_four_workers(tmp_path, fake):
    config = gateway_config(tmp_path, fake, load="load, rate_limit: {rpm: 10}")
    server = Gunicorn(config, workers=4, threads=8, env=ENV)
    try:
        away_from_a_minute_boundary()
        assert burst([server.url], 30) == {200: 10, 429: 20}
    finally:
        server.stop()


def test_sqlite_concurrency_holds_across_four_workers(tmp_path, fake):
    config = gateway_config(tmp_path, fake, load="load, rate_limit: {concurrency: 3}")
    server = Gunicorn(config, workers=4, threads=8, env=ENV)
    try:
        assert burst([server.url], 12, prompt="[sleep:1.5] slow") == {200: 3, 429: 9}
        assert burst([server.url], 3, prompt="[sleep:0.2]") == {200: 3}  # every slot came back
    finally:
        server.stop()


def test_redis_limits_hold_across_two_gateways(tmp_path, fake, redis_db):
    name = f"load-{uuid.uuid4().hex[:8]}"
    servers = []
    try:
        for host in ("a", "b"):
            (tmp_path / host).mkdir()
            config = gateway_config(
                tmp_path / host,
                fake,
                storage_url=REDIS_URL,
                load=f"{name}, rate_limit: {{rpm: 10, concurrency: 2}}",
            )
            servers.append(Gunicorn(config, workers=2, threads=8, env=ENV))
        urls = [s.url for s in servers]
        assert burst(urls, 8, prompt="[sleep:1.5] slow") == {200: 2, 429: 6}
        # Two at a time (the concurrency limit); 2 of the 10 per minute were spent above.
        assert burst(urls, 20, parallel=2) == {200: 8, 429: 12}
    finally:
        for server in servers:
            server.stop()
