"""The figures routing reads (cooldowns, calls in flight, latencies), shared by every worker through
the rate-limit store (SQLite, Redis) and kept by each worker for when that store is away; and a
target's own limits and budget, which skip it when they refuse."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import redis

from aisix_flask.config.aliases import Candidate, Plan
from aisix_flask.config.resources import Routing, RoutingTarget
from aisix_flask.policy.budgets import counter
from aisix_flask.policy.limits import Admission, Group, Limiter
from aisix_flask.policy.routing import RoutingState
from aisix_flask.stores.health import StoreHealth
from aisix_flask.stores.routing import Ending, MemoryRouting, TargetFigures, flight_key, routing_store_for
from aisix_flask.stores.spend import nanos
from aisix_flask.stores.sqlite import SQLiteStorage

from .budgeting import PER_TOKEN
from .conftest import ADMIN_KEY, CHAT_URL, assert_envelope, auth, named
from .routed import CHAT, SECOND, chat, rows_of

REDIS_URL = "redis://127.0.0.1:6379/8"


@pytest.fixture(params=["sqlite", "redis"])
def shared(request, tmp_path):
    """A limiter and the routing figures beside it, on one store."""
    url = f"sqlite:///{tmp_path}/limits.db" if request.param == "sqlite" else REDIS_URL
    if request.param == "redis":
        redis.Redis.from_url(REDIS_URL).ping()  # .ci/run starts Redis when it is down
    limiter = Limiter(url)
    yield limiter, routing_store_for(limiter.storage)
    if request.param == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()


def in_flight(limiter: Limiter, target: str, ttl_s: float = 60) -> Admission:
    """A call to ``target`` in flight, as the limiter takes it with the target's own limits."""
    [admission] = limiter.admit_together([Group([], (flight_key(target),))], ttl_s)
    return admission


def test_a_target_never_seen_has_no_figures(shared):
    _, store = shared
    assert store.figures(["nobody"]).get("nobody", TargetFigures()) == TargetFigures()


def test_calls_in_flight_latency_and_failures(shared):
    limiter, store = shared
    target = f"t-{uuid.uuid4().hex[:6]}"
    one, two = in_flight(limiter, target), in_flight(limiter, target)
    assert store.figures([target])[target].in_flight == 2
    limiter.finish(one, two)
    store.record(target, Ending(latency_ms=100.0))
    store.record(target, Ending(latency_ms=200.0))
    seen = store.figures([target])[target]
    assert seen.in_flight == 0 and seen.latency_ms == pytest.approx(130.0)  # 100 + 0.3 × (200 − 100)
    assert (seen.failures, seen.cooling_s, seen.failed_s_ago) == (0, 0.0, None)
    store.record(target, Ending(failed=True, cool_s=30))
    store.record(target, Ending(failed=True, cool_s=5))  # a shorter cooldown keeps the longer
    seen = store.figures([target])[target]
    assert seen.failures == 2 and 29 < seen.cooling_s <= 30 and 0 <= seen.failed_s_ago < 5
    assert seen.latency_ms == pytest.approx(130.0)  # failures carry no latency
    store.record(target, Ending(latency_ms=130.0, samples=3))
    assert store.figures([target])[target].failures == 0  # it answered again


def test_answers_written_together_weigh_as_many_written_one_by_one(shared):
    _, store = shared
    one_by_one, together = (f"t-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for target in (one_by_one, together):
        store.record(target, Ending(latency_ms=100.0))
    for _ in range(3):
        store.record(one_by_one, Ending(latency_ms=200.0))
    store.record(together, Ending(latency_ms=200.0, samples=3))
    figures = store.figures([one_by_one, together])
    assert figures[one_by_one].latency_ms == pytest.approx(figures[together].latency_ms)


def test_a_slot_past_its_time_stops_counting_and_a_renewed_one_does_not(shared):
    limiter, store = shared
    target = f"t-{uuid.uuid4().hex[:6]}"
    in_flight(limiter, target, 0.5)
    renewed = in_flight(limiter, target, 0.5)
    limiter.renew(renewed, 60)
    time.sleep(0.6)
    if isinstance(limiter.storage, SQLiteStorage):
        limiter.storage._next_sweep = 0.0  # it sweeps dead calls' slots once a second, at an admission
        in_flight(limiter, "other")
    assert store.figures([target])[target].in_flight == 1


def test_a_workers_own_view_counts_its_calls_and_failures():
    own = MemoryRouting()
    own.started("a", "one", 60)
    own.started("a", "short", 0.01)
    time.sleep(0.02)
    own.renew("a", "short", 60)  # past its time: not taken again
    assert own.figures(["a"])["a"].in_flight == 1
    own.ended("a", "one", Ending(latency_ms=50.0))
    own.ended("a", "gone", Ending(failed=True, cool_s=30))
    seen = own.figures(["a"])["a"]
    assert (seen.in_flight, seen.latency_ms, seen.failures) == (0, 50.0, 1) and seen.cooling_s > 29


def plan_of(*targets: tuple[str, int, int], strategy: str) -> Plan:
    """A plan of ``targets`` (name, weight, priority) under ``strategy``: only what ordering reads."""
    routing = Routing(tuple(RoutingTarget(n, w, p) for n, w, p in targets), strategy)
    candidates = tuple(
        Candidate(SimpleNamespace(alias=name), weight, priority)  # type: ignore[arg-type]
        for name, weight, priority in targets
    )
    return Plan("alias", SimpleNamespace(routing=routing), candidates)  # type: ignore[arg-type]


def test_least_busy_orders_by_calls_in_flight_per_weight():
    plan = plan_of(("a", 1, 0), ("b", 3, 0), ("c", 1, 0), strategy="least_busy")
    figures = {"a": TargetFigures(in_flight=2), "b": TargetFigures(in_flight=3), "c": TargetFigures()}
    assert [c.route.alias for c in RoutingState().order(plan, figures)] == ["c", "b", "a"]


def test_least_latency_probes_the_unmeasured_first_then_the_fastest():
    plan = plan_of(("a", 1, 0), ("b", 1, 0), ("c", 1, 0), strategy="least_latency")
    figures = {"a": TargetFigures(latency_ms=90), "b": TargetFigures(latency_ms=30), "c": TargetFigures()}
    assert [c.route.alias for c in RoutingState().order(plan, figures)] == ["c", "b", "a"]


def test_two_workers_on_one_store_see_each_others_cooldown_and_answers(tmp_path):
    url = f"sqlite:///{tmp_path}/limits.db"
    one, other = (RoutingState(routing_store_for(Limiter(url).storage)) for _ in range(2))
    lease = one.started("a", 60)
    lease.latency_ms = 80.0
    one.ended(lease)  # a target's first answer in a worker: written at once
    assert other.figures(["a"])["a"].latency_ms == 80.0
    for latency in (120.0, 120.0):  # later ones: together, once flush_s has passed
        lease = one.started("a", 60)
        lease.latency_ms = latency
        one.ended(lease)
    assert other.figures(["a"])["a"].latency_ms == 80.0
    one._flush_at = 0.0
    one.ended(one.started("a", 60), failed=True, cool_s=30)  # the answers before it first
    seen = other.figures(["a"])["a"]
    assert seen.cooling_s > 29 and seen.failures == 1
    assert seen.latency_ms == pytest.approx(80 + (1 - 0.7**2) * 40)


class Away:
    """A store that does not answer."""

    def __getattr__(self, name):
        def fails(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

        return fails


def test_a_store_away_leaves_each_worker_its_own_view(caplog):
    health = StoreHealth("ratelimit", "sqlite:///x.db")
    state = RoutingState(Away(), health)  # type: ignore[arg-type]
    lease = state.started("a", 60)
    assert state.figures(["a"])["a"].in_flight == 1
    state.ended(lease, failed=True, cool_s=30)  # not in the store: in this worker's view
    assert state.figures(["a"])["a"].cooling_s > 29 and not health.up
    assert '"event": "store_unavailable"' in caplog.text and '"doing": "routing: ' in caplog.text


# -- a target's own limits and budget -------------------------------------------------------------


def test_a_target_at_its_own_rate_limit_is_skipped(make_app, routed, upstream):
    named(routed, "models", "chat-prod")["rate_limit"] = {"rpm": 1}
    upstream.post(CHAT_URL, json=CHAT)
    second = upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    assert chat(client).headers["x-aisix-target"] == "chat-prod"
    assert chat(client).headers["x-aisix-target"] == "chat-b"  # chat-prod's minute is spent
    assert second.call_count == 1


def test_every_target_at_its_limit_is_429(make_app, routed, upstream):
    for name in ("chat-prod", "chat-b"):
        named(routed, "models", name)["rate_limit"] = {"rpm": 1}
    upstream.post(CHAT_URL, json=CHAT)
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    assert {chat(client).headers["x-aisix-target"] for _ in range(2)} == {"chat-prod", "chat-b"}
    r = chat(client)
    assert_envelope(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert "chat-prod" in r.json["error"]["message"] and int(r.headers["Retry-After"]) >= 1
    assert len(upstream.calls) == 2


def test_a_target_over_its_budget_is_skipped_and_spend_counts_at_the_target(make_app, routed, upstream):
    prod = named(routed, "models", "chat-prod")
    prod["pricing"] = PER_TOKEN
    prod["budget"] = {"usd": 0.000001, "period": "day"}
    named(routed, "models", "chat-b")["pricing"] = PER_TOKEN
    upstream.post(CHAT_URL, json={**CHAT, "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}})
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    app = make_app(routed)
    client = app.test_client()
    assert chat(client).headers["x-aisix-target"] == "chat-prod"  # not yet spent: it answers
    assert chat(client).headers["x-aisix-target"] == "chat-b"  # spent at chat-prod: skipped
    budgets = app.extensions["aisix"].budgets
    budgets.flush()
    models = ("chat-prod", "chat-routed", "chat-b")
    spent = budgets.store.spent([counter("model", name, "total") for name in models])
    cost = {row["target"]: nanos(row["cost_usd"] or 0) for row in rows_of(app)}
    assert cost["chat-prod"] > 0
    # The alias named counts both calls; each target what it answered.
    assert [spent.get(counter("model", name, "total"), 0) for name in models] == [
        cost["chat-prod"],
        cost["chat-prod"] + cost["chat-b"],
        cost["chat-b"],
    ]


# -- GET /admin/v1/routing ------------------------------------------------------------------------


def test_the_admin_api_shows_each_targets_figures(make_app, routed, upstream):
    named(routed, "models", "chat-routed")["routing"]["targets"][1]["weight"] = 2
    upstream.post(CHAT_URL, status=500, json={"error": {"message": "down"}})
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    assert chat(client).status_code == 200
    assert client.get("/admin/v1/routing", headers=auth()).status_code == 401  # a caller key
    r = client.get("/admin/v1/routing", headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    models = {row["model"]: row for row in r.json["data"]}
    assert set(models) == {"chat-routed", "images-routed", "images-deepseek-only"}
    assert models["chat-routed"]["strategy"] == "failover"
    failed, answered = models["chat-routed"]["targets"]
    assert failed["model"] == "chat-prod" and failed["failures"] == 1 and failed["in_flight"] == 0
    cooling = datetime.fromisoformat(failed["cooling_until"]) - datetime.now(UTC)
    assert 25 < cooling.total_seconds() <= 30 and failed["last_failure_at"].endswith("Z")
    assert answered == {
        "model": "chat-b",
        "provider": "openai",
        "upstream_model": "gpt-4o",
        "weight": 2,
        "priority": 0,
        "cooling_until": None,
        "in_flight": 0,
        "latency_ms": answered["latency_ms"],
        "failures": 0,
        "last_failure_at": None,
    }
    assert answered["latency_ms"] > 0


def test_a_target_the_callers_budget_cannot_price_is_skipped_and_keeps_nothing(make_app, routed, upstream):
    named(routed, "api_keys", "dev")["budget"] = {"usd": 10, "period": "day"}
    named(routed, "models", "chat-prod")["rate_limit"] = {"concurrency": 5}  # unpriced
    named(routed, "models", "chat-b")["pricing"] = PER_TOKEN
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    app = make_app(routed)
    r = chat(app.test_client())
    assert (r.status_code, r.headers["x-aisix-target"]) == (200, "chat-b")
    limiter = app.extensions["aisix"].limiter
    assert limiter.storage.read("SELECT key, id FROM slots", ()) == []  # every slot given back


def test_a_target_refused_by_its_budget_spends_nothing_of_its_rate_limit(make_app, routed, upstream):
    prod = named(routed, "models", "chat-prod")
    prod.update(pricing=PER_TOKEN, budget={"usd": 0.000001, "period": "day"}, rate_limit={"rpm": 2})
    upstream.post(CHAT_URL, json={**CHAT, "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}})
    upstream.post(f"{SECOND}/chat/completions", json=CHAT)
    client = make_app(routed).test_client()
    assert [chat(client).headers["x-aisix-target"] for _ in range(3)] == ["chat-prod", "chat-b", "chat-b"]
    # chat-prod's minute counted only the call it answered: a direct call passes its rpm (2) and
    # meets its spent budget
    r = chat(client, model="chat-prod")
    assert r.status_code == 429 and r.json["error"]["code"] == "insufficient_quota"
