"""Routing on the real gunicorn (two workers) against two loopback fake upstreams and a port
nobody listens on: every row of the failover table, with the fakes' own logs showing which
received what; cooldown seen by every worker and by two gateways on one Redis; each strategy's
spread; a multipart upload sent again byte for byte."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import redis
import requests

from .fake_upstream import FakeOpenAI
from .forms import field, file, raw_form
from .integration import ADMIN_KEY, DEV_KEY, ENV, UPSTREAM_KEY
from .serving import Gunicorn, free_port

REDIS_URL = "redis://127.0.0.1:6379/9"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)  # large enough to be spooled to a file


def routing_config(path: Path, a: FakeOpenAI, b: FakeOpenAI, storage_url: str | None = None) -> Path:
    """A config as a user writes it: a target per (case, upstream), routing models over them."""
    dead = f"http://127.0.0.1:{free_port()}/v1"  # refuses connections
    storage_url = storage_url or f"sqlite:///{path}/ratelimit.db"
    direct = []
    for case in (
        "refused",
        "e500",
        "e429",
        "e401",
        "e400",
        "slow",
        "early",
        "cut",
        "spread",
        "shared",
        "edit",
    ):
        for key in ("a", "b"):
            timeout = ", timeout_s: 1" if case == "slow" and key == "a" else ""
            model = "gpt-image-1" if case == "edit" else "gpt-4o"
            direct.append(f"{{display_name: {case}-{key}, provider: openai, model_name: {model},"
                          f" provider_key: {key}{timeout}}}")  # fmt: skip
    direct.append("{display_name: refused-dead, provider: openai, model_name: gpt-4o, provider_key: dead}")
    direct.append("{display_name: ds, provider: deepseek, model_name: x, provider_key: ds}")
    routes = [
        "{display_name: refused, routing: {targets: [{model: refused-dead}, {model: refused-b}]}}",
        *(
            f"{{display_name: {case}, routing: {{targets: [{{model: {case}-a}}, {{model: {case}-b}}]}}}}"
            for case in ("e500", "e429", "e401", "e400", "slow", "early", "cut", "shared", "edit")
        ),
        *(
            f"{{display_name: {alias}, routing: {{strategy: {strategy},"
            f" targets: [{{model: spread-a, weight: {weight}}}, {{model: spread-b}}]}}}}"
            for alias, strategy, weight in (
                ("rr", "round_robin", 3),
                ("busy", "least_busy", 1),
                ("fast", "least_latency", 1),
                ("sticky", "consistent_hash", 1),
            )
        ),
        "{display_name: ds-only, routing: {targets: [{model: ds}]}}",
    ]
    config = path / "config.yaml"
    config.write_text(
        f"""
gateway:
  usage: {{database_url: "sqlite:///{path}/usage.db", journal: "{path}/usage-journal.db"}}
  ratelimit: {{storage_url: "{storage_url}"}}
  admin_keys: [{{key_env: IT_ADMIN_KEY}}]
  stream_keepalive_s: 0.2
provider_keys:
  - {{display_name: a, provider: openai, api_key: "${{IT_UPSTREAM_KEY}}", api_base: "{a.url}"}}
  - {{display_name: b, provider: openai, api_key: "${{IT_UPSTREAM_KEY}}", api_base: "{b.url}"}}
  - {{display_name: dead, provider: openai, api_key: "${{IT_UPSTREAM_KEY}}", api_base: "{dead}"}}
  - {{display_name: ds, provider: deepseek, api_key: k, api_base: "{a.url}"}}
models:
"""
        + "".join(f"  - {row}\n" for row in direct + routes)
        + "api_keys:\n  - {display_name: dev, key_env: IT_DEV_KEY}\n"
    )
    return config


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    servers = (FakeOpenAI().start(), FakeOpenAI().start())
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, upstreams) -> Iterator[Gunicorn]:
    path = tmp_path_factory.mktemp("routing")
    server = Gunicorn(routing_config(path, *upstreams), workers=2, threads=8, env=ENV)
    yield server
    server.stop()
    assert UPSTREAM_KEY not in server.log.read_text()


@pytest.fixture
def fakes(upstreams) -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    """The two upstreams with nothing received and nothing steered."""
    for fake in upstreams:
        fake.calls.clear()
        fake.steer = ""
    yield upstreams
    for fake in upstreams:
        fake.steer = ""


def chat(gateway: Gunicorn, model: str, text: str = "hi", **extra) -> requests.Response:
    return requests.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {DEV_KEY}", **extra.pop("headers", {})},
        json={"model": model, "messages": [{"role": "user", "content": text}], **extra},
        timeout=30,
    )


def models_of(fake: FakeOpenAI) -> list[str]:
    """Which upstream model each call the fake received named (what the gateway sent it)."""
    return [call["body"].get("model") for call in fake.calls]


def routing_view(gateway: Gunicorn, alias: str) -> dict[str, dict]:
    r = requests.get(f"{gateway.url}/admin/v1/routing", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    [row] = [row for row in r.json()["data"] if row["model"] == alias]
    return {target["model"]: target for target in row["targets"]}


def test_refused_connections_move_on_and_cool_the_target(served, fakes):
    _, b = fakes
    r = chat(served, "refused")
    assert r.status_code == 200
    # refused twice (gateway.upstream.retries: 1), then the next target
    assert (r.headers["x-aisix-target"], r.headers["x-aisix-attempts"]) == ("refused-b", "3")
    for _ in range(6):  # both workers: the dead target is skipped, not tried again
        r = chat(served, "refused")
        assert (r.status_code, r.headers["x-aisix-attempts"]) == (200, "1")
    assert len(b.calls) == 7


@pytest.mark.parametrize(
    ("case", "steer", "cooling"),
    [("e500", "[status:500]", 30), ("e429", "[status:429]", 7), ("e401", "[status:401]", 30)],
)
def test_a_failed_target_is_skipped_by_every_worker_until_it_cools(served, fakes, case, steer, cooling):
    a, b = fakes
    a.steer = steer
    r = chat(served, case)
    assert (r.status_code, r.headers["x-aisix-target"], r.headers["x-aisix-attempts"]) == (
        200,
        f"{case}-b",
        "2",
    )
    with ThreadPoolExecutor(8) as pool:  # spread over both workers
        answers = list(pool.map(lambda _: chat(served, case), range(16)))
    assert {(r.status_code, r.headers["x-aisix-target"]) for r in answers} == {(200, f"{case}-b")}
    assert (len(a.calls), len(b.calls)) == (1, 17)  # the failed target received nothing more
    view = routing_view(served, case)[f"{case}-a"]
    left = (
        time.mktime(time.strptime(view["cooling_until"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    ) - time.time()
    assert cooling - 3 < left <= cooling and view["failures"] == 1  # a 429's Retry-After (7 s) wins


def test_the_callers_own_400_is_passed_through_untried_elsewhere(served, fakes):
    a, b = fakes
    a.steer = "[status:400]"
    r = chat(served, "e400")
    assert r.status_code == 400 and r.headers["x-aisix-target"] == "e400-a"
    assert (len(a.calls), len(b.calls)) == (1, 0)


def test_a_timed_out_generation_is_never_sent_to_a_second_target(served, fakes):
    a, b = fakes
    a.steer = "[sleep:2.5]"  # slow-a's timeout is 1 s
    r = chat(served, "slow")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert (len(a.calls), len(b.calls)) == (1, 0)
    r = chat(served, "slow")  # slow-a cools: the next request goes to slow-b
    assert (r.status_code, r.headers["x-aisix-target"]) == (200, "slow-b")


def test_a_stream_moves_on_while_nothing_reached_the_caller(served, fakes):
    a, b = fakes
    a.steer = "[status:503]"
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=DEV_KEY, max_retries=0)
    response = client.chat.completions.with_raw_response.create(
        model="early", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert (response.headers["x-aisix-target"], response.headers["x-aisix-attempts"]) == ("early-b", "2")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == "Hello from the fake upstream"
    assert (len(a.calls), len(b.calls)) == (1, 1)


def test_a_cut_stream_ends_with_an_error_event_and_cools_its_target(served, fakes):
    a, b = fakes
    a.steer = "[cut:1]"
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=DEV_KEY, max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="cut", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    assert (len(a.calls), len(b.calls)) == (1, 0)  # begun: never sent elsewhere
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="cut", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if chunk.choices
    )
    assert text and (len(a.calls), len(b.calls)) == (1, 1)  # cut-a cools down
    assert routing_view(served, "cut")["cut-a"]["cooling_until"] is not None


def test_a_multipart_upload_is_sent_again_byte_for_byte(served, fakes):
    a, b = fakes
    a.steer = "[status:503]"
    body, headers = raw_form(
        field("model", "edit"),
        field("prompt", "a hat"),
        file("image", "cat.png", PNG),
        field("size", "1024x1024"),
    )
    r = requests.post(
        f"{served.url}/v1/images/edits", data=body, headers={**headers, "Authorization": f"Bearer {DEV_KEY}"}
    )
    assert (r.status_code, r.headers["x-aisix-target"]) == (200, "edit-b")
    [first], [second] = a.calls, b.calls
    assert first["parts"] == second["parts"]  # each part's headers, size and SHA-256
    [image] = [part for part in second["parts"] if part["name"] == "image"]
    assert image["size"] == len(PNG)


def test_an_image_request_to_a_routing_model_without_openai_targets_is_refused(served, fakes):
    r = requests.post(
        f"{served.url}/v1/images/generations",
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": "ds-only", "prompt": "p"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_provider"
    assert sum(len(fake.calls) for fake in fakes) == 0


def test_round_robin_spreads_by_weight_across_workers(served, fakes):
    a, b = fakes
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(served, "rr"), range(400)))
    assert {r.status_code for r in answers} == {200}
    assert abs(len(a.calls) - 300) <= 4 and len(a.calls) + len(b.calls) == 400


def test_least_busy_counts_calls_in_flight_across_workers(served, fakes):
    a, b = fakes
    a.steer = "[sleep:2]"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, served, "busy")  # both idle: the first target, which holds it
        time.sleep(0.5)
        # One after another, on either worker: the one that does not hold the slow call would
        # send to spread-a if it counted only its own (with each worker's own view, this fails).
        answers = [chat(served, "busy") for _ in range(10)]
        assert slow.result().headers["x-aisix-target"] == "spread-a"
    assert {(r.status_code, r.headers["x-aisix-target"]) for r in answers} == {(200, "spread-b")}
    assert (len(a.calls), len(b.calls)) == (1, 10)


def test_least_latency_sends_to_the_faster_target(served, fakes):
    a, b = fakes
    a.steer = "[sleep:0.2]"
    targets = Counter(chat(served, "fast").headers["x-aisix-target"] for _ in range(20))
    # spread-a at most twice: once to measure it, if it had no figure yet
    assert targets["spread-b"] >= 18


def test_consistent_hash_keeps_a_key_on_one_target(served, fakes):
    seen = {
        key: {chat(served, "sticky", headers={"x-aisix-routing-key": key}).headers["x-aisix-target"]
              for _ in range(4)}
        for key in (f"user-{i}" for i in range(12))
    }  # fmt: skip
    assert all(len(targets) == 1 for targets in seen.values())
    assert {target for targets in seen.values() for target in targets} == {"spread-a", "spread-b"}


def test_two_gateways_on_one_redis_share_a_cooldown(tmp_path, fakes):
    a, b = fakes
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()  # (.ci/run starts Redis when it is down)
    gateways = []
    try:
        for host in ("one", "two"):
            (tmp_path / host).mkdir()
            config = routing_config(tmp_path / host, a, b, storage_url=REDIS_URL)
            gateways.append(Gunicorn(config, workers=2, threads=8, env=ENV))
        a.steer = "[status:502]"
        assert chat(gateways[0], "shared").headers["x-aisix-target"] == "shared-b"
        for _ in range(6):
            assert chat(gateways[1], "shared").headers["x-aisix-attempts"] == "1"
        assert (len(a.calls), len(b.calls)) == (1, 7)
        view = routing_view(gateways[1], "shared")
        assert view["shared-a"]["failures"] == 1 and view["shared-a"]["cooling_until"]
    finally:
        for gateway in gateways:
            gateway.stop()
        connection.flushdb()
        connection.close()
