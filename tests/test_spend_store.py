"""The spend counters themselves, SQLite and Redis alike: exact in nano-dollars, and an earlier
version's float counters carried over."""

from __future__ import annotations

import time

import pytest


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_counters_are_exact(tmp_path, backend):
    """Whole nano-dollars: three 0.10 USD reservations fit a 0.30 budget (as floats they do not)."""
    import redis as redis_client

    from aisix_flask.policy.limits import Limiter
    from aisix_flask.stores.spend import Charge, nanos, spend_store_for

    url = f"sqlite:///{tmp_path}/rl.db" if backend == "sqlite" else "redis://127.0.0.1:6379/11"
    if backend == "redis":
        redis_client.Redis.from_url(url).flushdb()
    store = spend_store_for(Limiter(url).storage)
    key = f"key:exact-{backend}:total"
    admitted = sum(store.reserve([Charge(key, nanos(0.3), nanos(0.1), None)]) is None for _ in range(10))
    assert admitted == 3 and store.spent([key]) == {key: nanos(0.3)}
    store.add([Charge(key, None, -nanos(0.1), None)] * 3)
    assert store.spent([key]) == {key: 0}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_counters_from_before_nano_dollars_are_carried_over(tmp_path, backend):
    """An upgrade keeps what was spent: the float USD counters of the earlier version become
    nano-dollars (their expiry kept), once, when the gateway starts."""
    import sqlite3

    import redis as redis_client

    from aisix_flask.policy.limits import Limiter
    from aisix_flask.stores.spend import SPEND_PREFIX, nanos, spend_store_for

    key, later = "key:old:d2026-11-25", time.time() + 86400
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/rl.db"
        with sqlite3.connect(tmp_path / "rl.db") as db:
            db.execute(
                "CREATE TABLE spend (key TEXT PRIMARY KEY, usd REAL NOT NULL, expires_at REAL NOT NULL)"
            )
            db.execute("INSERT INTO spend VALUES (?, ?, ?)", (key, 0.1 + 0.2, later))
    else:
        url = "redis://127.0.0.1:6379/11"
        connection = redis_client.Redis.from_url(url)
        connection.flushdb()
        connection.incrbyfloat(SPEND_PREFIX + key, 0.1)
        connection.incrbyfloat(SPEND_PREFIX + key, 0.2)
        connection.expireat(SPEND_PREFIX + key, int(later))
        connection.incrby(SPEND_PREFIX + "key:new:total", nanos(12.5))  # already nano-dollars
        connection.incrbyfloat(SPEND_PREFIX + "key:big:total", 123456.789)  # 1.2e14 nano-dollars
    store = spend_store_for(Limiter(url).storage)
    assert store.spent([key]) == {key: nanos(0.3)}
    assert spend_store_for(Limiter(url).storage).spent([key]) == {key: nanos(0.3)}  # once only
    if backend == "redis":
        assert store.spent(["key:new:total"]) == {"key:new:total": nanos(12.5)}
        assert store.spent(["key:big:total"]) == {"key:big:total": nanos(123456.789)}
        assert 86000 < connection.ttl(SPEND_PREFIX + key) <= 86400 + 1
        connection.flushdb()
