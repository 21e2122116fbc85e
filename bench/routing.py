"""The ``routing`` scenario: what a routing model costs beside a direct one, and what callers see
when one of its two upstreams dies under load.

Two bench/fake_upstream.py processes, one per target, and a gateway whose config adds to the
bench's (bench/config.py) a second direct model on the second upstream and two routing models over
both: ``routed`` (failover, its first target answers) and ``spread`` (round robin, 1:1).

- c=1: the direct model and ``routed`` measured in turn, three times each: the routing model's
  added p50 is the median of the three against the median of the three.
- c=64 on ``spread`` (bench/aioload.py): a run with both upstreams, then a run in which the second
  is killed a third of the way in. Its callers' failures are the calls that upstream held when
  it died (sent, and never sent again: the provider may have generated); every later call moves
  on before anything was sent, and the dead target is skipped while it cools
  (``cooldown_s: 2`` here, so that a run sees it cool and be tried again).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from bench import aioload
from bench.config import gateway_config, write_config
from bench.harness import KEY, Server, in_turn
from bench.scenarios import IMAGES, SMALL, Plan, Row, checked
from tests.serving import free_port

COOLDOWN_S = 2


def routing_config(tmp: Path, first: str, second: str) -> str:
    """The bench's config with a second upstream and two routing models over both."""
    text = gateway_config(tmp, first).replace(
        "provider_keys:\n",
        f"  upstream: {{cooldown_s: {COOLDOWN_S}}}\nprovider_keys:\n"
        f'  - {{display_name: second, provider: openai, api_key: sk-bench, api_base: "{second}"}}\n',
    )
    return text.replace(
        "api_keys:\n",
        "  - {display_name: image-second, provider: openai, model_name: gpt-image-1, provider_key: second}\n"
        "  - {display_name: routed, routing: {targets: [{model: image-prod}, {model: image-second}]}}\n"
        "  - display_name: spread\n"
        "    routing: {strategy: round_robin, targets: [{model: image-prod}, {model: image-second}]}\n"
        "api_keys:\n",
    )


def routing_rows(
    plan: Plan,
    tmp: Path,
    start: Callable[[str, int | None, int | None, dict[str, str]], Server],
    stop: Callable[[Server], None],
    measure: Callable[..., dict],
) -> list[Row]:
    """The routing rows (``start``/``stop``/``measure`` as bench/run.py's)."""
    fakes = []
    for name in ("fake-first", "fake-second"):
        port = free_port()
        command = [sys.executable, "bench/fake_upstream.py", "--port", str(port)]
        fakes.append(Server(command, port, {}, tmp / f"{name}.log"))
    try:
        first, second = (f"{fake.url}/v1" for fake in fakes)
        write_config(tmp / "routing.yaml", routing_config(tmp, first, second))
        gw = start("gateway-routing", plan.workers, plan.threads, {"AISIX_CONFIG": str(tmp / "routing.yaml")})
        rows = [_overhead_row(gw, measure)]
        rows.append(_failover_row(plan, gw, fakes[1]))
        stop(gw)
        return rows
    finally:
        for fake in fakes:
            fake.stop()


def _overhead_row(gw: Server, measure: Callable[..., dict]) -> Row:
    d, r, runs = in_turn(
        lambda: measure(gw.url + IMAGES, SMALL, 1)["p50"],
        lambda: measure(gw.url + IMAGES, {**SMALL, "model": "routed"}, 1)["p50"],
    )
    return (
        "c=1 p50 ms, routing model (direct model in the direct column)",
        "added ≤ 0.1 ms",
        d,
        r,
        f"added {r - d:+.3f} ms (median of 3 runs each, in turn: {runs})",
    )


def _failover_row(plan: Plan, gw: Server, second: Server) -> Row:
    body = json.dumps({**SMALL, "model": "spread"}).encode()
    seconds = plan.seconds * 3

    def run() -> dict:
        return aioload.run(
            gw.url + IMAGES, body, connections=64, seconds=seconds, timeout=plan.timeout_s, key=KEY
        )

    healthy = checked(run(), "calls with both upstreams", plan.smoke)
    kill_at = seconds / 3
    killer = threading.Timer(kill_at, second.process.kill)
    killer.start()
    try:
        degraded = run()
    finally:
        killer.cancel()
    late = [at for at in degraded["failed_at_s"] if at > kill_at + 1]
    failures = f"; e.g. {degraded['failures']}" if degraded["failed"] else ""
    return (
        "c=64 req/s, one of two targets killed (both healthy in the direct column)",
        "≥ 90 % of healthy; no failure after the kill's first second",
        healthy["rps"],
        degraded["rps"],
        f"{degraded['rps'] / healthy['rps']:.0%} of healthy; failed {degraded['failed']} "
        f"({len(late)} more than 1 s after the kill, cooldown {COOLDOWN_S} s){failures}",
    )
