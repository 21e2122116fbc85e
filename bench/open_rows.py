"""The ``open`` scenario: load as a new user's would arrive, and the CPU each call costs.

Open loop (bench/openloop.py): requests arrive as a Poisson process at a fixed rate for a fixed
time, each latency counted from its scheduled send, on the gateway as ``make serve`` runs it and
on the bare proxy (bench/bare_proxy.py) on the same workers, beside the fake upstream direct. The
three are sent the same schedule (one seed), each after a warm-up at the same rate.

- chat streams (~2.1 s, 7 content events and the usage chunk) at ``open_stream_rate``;
- 5 s image generations at ``open_generation_rate``;
- CPU seconds per call of all the gateway's processes (master, workers, the ledger's writer)
  beside the bare proxy's, over the same runs: the small call (an image generation the fake answers
  at once, at ``open_small_rate``), the generation and the stream. The small call is measured in
  turn, ``cpu_runs`` times each, and the median kept: a CPU figure over a few seconds moves by
  ±10 % from run to run on a shared box.

The ``cpu`` scenario (``cpu_rows``) takes the gateway's CPU per call apart: the small call and the
stream (at ``cpu_stream_rate``), each in turn with the bare proxy, with the full config and with
parts of it taken away (bench/config.py's BREAKDOWN: the concurrency slots, the rate limits, the
access log).
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from bench import openloop
from bench.config import BREAKDOWN
from bench.harness import KEY, Server, in_turn
from bench.scenarios import CHAT, IMAGES, SMALL, Plan, Row, checked

STREAM_BODY = {
    "messages": [{"role": "user", "content": "Count to seven [gap:0.3] [chunks:7]"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
GENERATION = {"prompt": "[sleep:5] a slow generation"}
# The same model the gateway's alias names, for the direct and bare runs.
UPSTREAM_MODEL = {"chat-prod": "gpt-4o-mini", "image-prod": "gpt-image-1"}


class OpenRuns:
    """Open-loop runs against the fake upstream direct (``where`` "direct"), the bare proxy or the
    gateway, each server's CPU ms per completed call measured over the run."""

    paths = {CHAT: "/chat/completions", IMAGES: "/images/generations"}

    def __init__(self, plan: Plan, upstream: str, gw: Server, bare: Server) -> None:
        self.plan, self.upstream, self.servers = plan, upstream, {"gateway": gw, "bare": bare}

    def __call__(self, where: str, route: str, body: dict[str, Any], rate: float, seconds: float) -> dict:
        server = self.servers.get(where)
        url = server.url + route if server is not None else self.upstream + self.paths[route]
        if where != "gateway":  # (the bare proxy forwards the body as it is)
            body = {**body, "model": UPSTREAM_MODEL[body["model"]]}
        before = server.cpu_seconds() if server is not None else 0.0
        result = openloop.run(url, json.dumps(body).encode(), rate=rate, seconds=seconds,
                              stream=route == CHAT and body.get("stream") is True,
                              timeout=self.plan.timeout_s, key=KEY)  # fmt: skip
        if server is not None:
            result["cpu_ms"] = (server.cpu_seconds() - before) * 1000 / max(1, result["completed"])
        return checked(result, f"{where} open-loop calls to {route}", self.plan.smoke)

    def cpu_in_turn(self, route: str, body: dict[str, Any], rate: float) -> tuple[float, float, str]:
        """CPU ms per call of the bare proxy and of the gateway, measured in turn ``cpu_runs``
        times each (a CPU figure over a few seconds moves by ±10 % on a shared box): the medians,
        and every run's pair."""

        def cpu(where: str) -> float:
            return float(self(where, route, body, rate, self.plan.cpu_seconds)["cpu_ms"])

        return in_turn(lambda: cpu("bare"), lambda: cpu("gateway"), self.plan.cpu_runs)


def open_rows(plan: Plan, upstream: str, gw: Server, bare: Server) -> list[Row]:
    """The open-loop rows: streams and generations direct, through the bare proxy and through
    the gateway; then CPU per call of the gateway against the bare proxy."""
    run = OpenRuns(plan, upstream, gw, bare)
    rows: list[Row] = []
    cpu: dict[str, tuple[float, float]] = {}  # what: (bare, gateway) CPU ms per call
    loads = (
        ("streams", CHAT, {"model": "chat-prod", **STREAM_BODY}, plan.open_stream_rate,
         "p50 ≤ 1.05 ×, p99 ≤ 1.2 × direct; none failed"),
        ("5 s generations", IMAGES, {"model": "image-prod", **GENERATION}, plan.open_generation_rate,
         "p50 ≤ 1.02 ×, p99 ≤ 1.05 × direct"),
    )  # fmt: skip
    for what, route, body, rate, target in loads:
        if plan.smoke:
            body = json.loads(json.dumps(body).replace("[gap:0.3]", "[gap:0.01]").replace("[sleep:5]", ""))
        figures = {}
        for where in ("direct", "bare", "gateway"):
            # Warmed at the same rate first (not measured): the first calls of a fresh server
            # open its upstream connections and files, which a running one has done long ago.
            run(where, route, body, rate, plan.open_warm_up_s)
            figures[where] = run(where, route, body, rate, plan.open_seconds)
        d, b, g = figures.values()
        name = f"open {what} {rate:g}/s × {plan.open_seconds:g} s"
        for figure in ("p50", "p99"):
            note = (
                f"{g[figure] / d[figure]:.3f} × direct (bare proxy {b[figure] / d[figure]:.3f} ×); "
                f"failed {d['failed']} / {b['failed']} / {g['failed']} (direct / bare / gateway)"
            )
            if figure == "p99":
                note += (
                    f"; p99 by sixth of the run {g['p99_by_step']}; generator lag p99 {g['lag_p99']:.1f} ms"
                )
                reasons = {f"{where}: {why}": n for where, result in figures.items()
                           for why, n in result["failures"].items()}  # fmt: skip
                if reasons:
                    note += f"; failures {reasons}"
            rows.append(
                (f"{name} {figure} ms", target if figure == "p50" else "", d[figure], g[figure], note)
            )
        cpu[what] = (b["cpu_ms"], g["cpu_ms"])

    bare_ms, gateway_ms, runs = run.cpu_in_turn(IMAGES, SMALL, plan.open_small_rate)
    cpu["small call"] = (bare_ms, gateway_ms)
    for what in ("small call", "5 s generations", "streams"):
        b_ms, g_ms = cpu[what]
        target = "≤ 1.3 × bare" if what != "5 s generations" else ""
        ratio = g_ms / b_ms if b_ms else float("nan")  # (a smoke run may not reach a clock tick)
        note = f"{ratio:.2f} × the bare proxy's (bare in the direct column)"
        if what == "small call":
            note += f"; {plan.open_small_rate:g}/s, in turn: {runs}"
        rows.append((f"CPU ms per call, {what}", target, b_ms, g_ms, note))
    return rows


class Configure(Protocol):
    """Write the gateway's config with these rate limits and access log (bench/config.py's
    ``gateway_config``); with no arguments, the bench's full config."""

    def __call__(self, limits: str = ..., access_log: bool = ...) -> None: ...


def cpu_rows(plan: Plan, upstream: str, gw: Server, bare: Server, configure: Configure) -> list[Row]:
    """CPU ms per small call and per stream with parts of the gateway's config taken away
    (bench/config.py's BREAKDOWN, each a live edit by ``configure``), each measured in turn with
    the bare proxy; the full config is restored at the end."""
    run = OpenRuns(plan, upstream, gw, bare)
    stream = {"model": "chat-prod", **STREAM_BODY}
    if plan.smoke:
        stream = json.loads(json.dumps(stream).replace("[gap:0.3]", "[gap:0.01]"))
    rows: list[Row] = []
    try:
        for label, limits, access_log in BREAKDOWN:
            configure(limits, access_log)
            time.sleep(plan.reload_wait_s)  # each worker reads the edited file
            for what, route, body, rate in (
                ("small call", IMAGES, SMALL, plan.open_small_rate),
                ("stream", CHAT, stream, plan.cpu_stream_rate),
            ):
                bare_ms, gateway_ms, runs = run.cpu_in_turn(route, body, rate)
                ratio = gateway_ms / bare_ms if bare_ms else float("nan")
                note = (
                    f"{ratio:.2f} × the bare proxy's (bare in the direct column); {rate:g}/s, in turn: {runs}"
                )
                rows.append((f"CPU ms per {what}, {label}", "", bare_ms, gateway_ms, note))
    finally:
        configure()
        time.sleep(plan.reload_wait_s)
    return rows
