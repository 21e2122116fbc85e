"""The gateway against its targets: direct, bare proxy and gateway measured in one run.

Starts bench/fake_upstream.py (asyncio), bench/bare_proxy.py and the gateway (the real gunicorn;
the config shape of a real deployment: caller keys, a keyword guardrail, rate limits on SQLite,
the SQLite ledger, the access log) and drives them with wrk (Debian package ``wrk``). Only
127.0.0.1 is contacted; every run is bounded by its duration.

    .venv/bin/python bench/run.py [--seconds 5] [--quick | --only edits,streams,fast]
        [--gunicorn-args "-k gevent --worker-connections 2000"]
    .venv/bin/python bench/run.py --smoke    # every step once, tiny: what the test suite runs

Scenarios (``--only`` takes their names): ``latency`` (c=1, 8, 64), ``chat`` (the chat route beside
the image route: c=1, 8, 64 not streamed, the first event and the end of a stream at c=1, the memory
of 100 streams in flight), ``breakdown`` (c=64 with parts
of the config taken away), ``redis`` (the limits on Redis, when one answers on 6379), ``routing``
(a routing model beside a direct one at c=1, and one of its two upstreams killed at c=64),
``providers`` (the anthropic adapter's translation beside OpenAI's API, whole and streamed), ``slow``
(1,000 concurrent 5 s generations and the memory they take), ``large`` (8 and 32 MB answers), and
three on the gateway as ``make serve`` runs it (gunicorn.conf.py, no -w/--threads), driven by
bench/aioload.py instead of wrk: ``edits`` (4 × 4 MB image edits at c=1 and c=4, and the memory
each in-flight edit takes), ``streams`` (1,000 concurrent ~2 s chat streams, beside the bare proxy
relaying them on the same workers), ``fast`` (c=8
small requests while 1,000 slow generations hold the gateway) and ``open`` (open-loop streams and
generations at fixed arrival rates, and the CPU each call costs beside the bare proxy:
bench/open_rows.py; ``--open-seconds`` sets how long each load arrives), ``cpu`` (the CPU per small
call and per stream beside the bare proxy's, with parts of the config taken away; about 7 minutes).
``--gunicorn-args`` is appended to
every gateway's gunicorn command line (not the bare proxy's); the heading shows the worker class
and workers × threads each gateway ended up with.

``--smoke`` proves the script still works, not how fast anything is: a fraction of a second per
load run, a few connections where the real run has 1,000, a 1 MB answer for the 8 and 32 MB ones,
and any failed request ends it with an error. Its load comes from small built-in generators
(threads + requests, and bench/aioload.py) because wrk counts time in whole seconds and may not be
installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.config import BREAKDOWN, FULL_LIMITS, REDIS_STORE, gateway_config, write_config  # noqa: E402
from bench.harness import (  # noqa: E402
    Server,
    gunicorn,
    gunicorn_args,
    load,
    probe_gunicorn,
    redis_answers,
)
from bench.open_rows import cpu_rows, open_rows  # noqa: E402
from bench.providers import provider_rows  # noqa: E402
from bench.routing import routing_rows  # noqa: E402
from bench.scenarios import (  # noqa: E402
    IMAGES,
    SMALL,
    Row,
    chat_rows,
    edit_rows,
    fast_rows,
    plan_for,
    stream_rows,
)
from tests.serving import free_port  # noqa: E402

SCENARIOS = ("latency", "chat", "breakdown", "redis", "routing", "providers", "slow", "large",
             "edits", "streams", "fast", "open", "cpu")  # fmt: skip
# Measured with wrk in real runs (chat: its answers that are not streamed); the others use
# bench/aioload.py.
WRK_SCENARIOS = frozenset(
    ("latency", "chat", "breakdown", "redis", "routing", "providers", "slow", "large")
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument(
        "--open-seconds", type=float, default=30, help="how long each open-loop load arrives (open)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for the latency runs")
    parser.add_argument("--threads", type=int, default=16)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="the latency rows only (--only latency)")
    which.add_argument("--only", help=f"comma-separated scenarios, of: {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--gunicorn-args",
        default="",
        help='appended to every gateway\'s gunicorn command line, e.g. "-k gevent --worker-connections 2000"',
    )
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this directory")
    parser.add_argument(
        "--smoke", action="store_true", help="every step once, tiny, no wrk needed: does the script work?"
    )
    args = parser.parse_args()
    plan = plan_for(args)
    only = set(SCENARIOS) if not (args.only or args.quick) else {"latency"}
    if args.only:
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        if not only or only - set(SCENARIOS):
            sys.exit(f"--only {args.only!r}: give scenarios separated by commas, of: {', '.join(SCENARIOS)}")
    if not plan.smoke and only & WRK_SCENARIOS and not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    extra = shlex.split(args.gunicorn_args)
    variants = {}  # what each gateway's command line makes of gunicorn.conf.py and --gunicorn-args
    if only & {"latency", "chat", "breakdown", "redis", "routing", "providers"}:
        label = f"latency runs (-w {plan.workers} --threads {plan.threads})"
        variants[label] = gunicorn_args(0, plan.workers, plan.threads, extra)
    if only & {"slow", "large"}:
        variants["slow, large, edits, streams, fast, open, cpu (as make serve)"] = gunicorn_args(
            0, None, None, extra
        )
    elif only & {"edits", "streams", "fast", "open", "cpu"}:
        variants["edits, streams, fast, open, cpu (as make serve)"] = gunicorn_args(0, None, None, extra)
    # Read while the fake upstream starts; any answer before a gateway does.
    read_setups = probe_gunicorn(variants)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)

        def measure(
            url: str, body: dict, connections: int, seconds: float = plan.seconds, watch: Server | None = None
        ) -> dict:
            return load(url, body, connections, seconds, tmp, plan.smoke, watch)

        def start(name: str, workers: int | None, threads: int | None, env: dict[str, str]) -> Server:
            server = gunicorn("wsgi:app", free_port(), workers, threads, env, tmp, name, extra)
            servers.append(server)
            return server

        def stop(server: Server) -> None:
            server.stop()
            servers.remove(server)

        servers: list[Server] = []
        fake_port = free_port()
        fake = Server(
            [sys.executable, "bench/fake_upstream.py", "--port", str(fake_port)],
            fake_port,
            {},
            tmp / "fake.log",
        )
        try:
            setups = read_setups()
            upstream = f"http://127.0.0.1:{fake_port}/v1"
            write_config(tmp / "config.yaml", gateway_config(tmp, upstream))
            env = {"AISIX_CONFIG": str(tmp / "config.yaml")}
            direct = f"{upstream}/images/generations"
            small = SMALL
            route = IMAGES
            images: dict[int, tuple[dict, dict, dict]] = {}  # the latency rows' figures, by c
            bare = None
            if only & {"latency", "chat", "breakdown", "redis", "large"}:
                bare = gunicorn("bench.bare_proxy:app", free_port(), plan.workers, plan.threads,
                                {"BARE_UPSTREAM": upstream}, tmp, "bare")  # fmt: skip
                servers.append(bare)
            if only & {"latency", "chat", "breakdown", "redis"}:
                gw = start("gateway", plan.workers, plan.threads, env)
            if "latency" in only:
                for c in (1, 8, 64):
                    d = measure(direct, small, c)
                    b = measure(bare.url + route, small, c)
                    g = measure(gw.url + route, small, c)
                    images[c] = (d, b, g)
                    if c == 1:
                        rows.append(
                            (
                                "c=1 p50 ms",
                                "added ≤ 1.0 ms",
                                d["p50"],
                                g["p50"],
                                f"added {g['p50'] - d['p50']:+.2f} ms; bare proxy {b['p50'] - d['p50']:+.2f}",
                            )
                        )
                        rows.append(
                            ("c=1 p99 ms", "", d["p99"], g["p99"], f"added {g['p99'] - d['p99']:+.2f} ms")
                        )
                    else:
                        rows.append(
                            (
                                f"c={c} req/s",
                                "≥ 80 % of bare",
                                d["rps"],
                                g["rps"],
                                f"bare {b['rps']:.0f}: gateway {g['rps'] / b['rps']:.0%} of bare",
                            )
                        )
            if "chat" in only:
                rows += chat_rows(plan, upstream, gw, bare, measure, images)
            if "breakdown" in only:
                # What each part costs: the same gateway, its config edited (reloaded live).
                for label, limits, access_log in BREAKDOWN:
                    write_config(tmp / "config.yaml", gateway_config(tmp, upstream, limits, access_log))
                    time.sleep(plan.reload_wait_s)
                    b = measure(bare.url + route, small, 64)
                    g = measure(gw.url + route, small, 64)
                    share = f"gateway {g['rps'] / b['rps']:.0%} of bare (bare in the direct column)"
                    rows.append((f"c=64 req/s, {label}", "", b["rps"], g["rps"], share))
                write_config(tmp / "config.yaml", gateway_config(tmp, upstream))
            if "redis" in only and redis_answers():  # the multi-host store; a store URL needs a restart
                write_config(tmp / "redis.yaml", gateway_config(tmp, upstream, store=REDIS_STORE))
                gw_redis = start(
                    "gateway-redis", plan.workers, plan.threads, {"AISIX_CONFIG": str(tmp / "redis.yaml")}
                )
                b = measure(bare.url + route, small, 64)
                g = measure(gw_redis.url + route, small, 64)
                share = f"gateway {g['rps'] / b['rps']:.0%} of bare (bare in the direct column)"
                rows.append(("c=64 req/s, limits: all three, on Redis", "", b["rps"], g["rps"], share))
                stop(gw_redis)
            if "routing" in only:
                rows += routing_rows(plan, tmp, start, stop, measure)
            if "providers" in only:
                rows += provider_rows(plan, tmp, upstream, start, stop, measure)
            if only & {"latency", "chat", "breakdown", "redis"}:
                stop(gw)  # the bare proxy stays: the large answers are measured through it too
            if only & {"slow", "large"}:
                n, sleep = plan.slow_connections, plan.slow_sleep_s
                slow_setup = "gunicorn.conf.py's workers, as make serve runs it"
                slow = {"model": "image-prod", "prompt": f"[sleep:{sleep:g}] a slow generation"}
                gw = start("gateway-slow", None, None, env)
            if "slow" in only:
                d = measure(direct, {**slow, "model": "gpt-image-1"}, n, plan.slow_seconds)
                d_slow_p99 = d["p99"]
                g = measure(gw.url + route, slow, n, plan.slow_seconds, watch=gw)
                failed = f"failed {d['failed']} / {g['failed']}"
                slow_row = [f"{n} × {sleep:g} s p99 ms", "≤ 1.1 × direct", d["p99"], g["p99"],
                            f"{g['p99'] / d['p99']:.2f} × direct; {failed}; "
                            f"throughput {g['rps'] / d['rps']:.2f} × direct"]  # fmt: skip
                rows.append(slow_row)
                rows.append(
                    (
                        f"{n} × {sleep:g} s RSS MB",
                        "≤ 400 MB",
                        0,
                        g["peak_rss_mb"],
                        f"all gateway processes, peak ({slow_setup})",
                    )
                )
            if "large" in only:
                for size in plan.sizes_mb:
                    big = {"model": "image-prod", "prompt": f"[b64:{size}mb]"}
                    idle = gw.rss_mb()
                    d = measure(direct, big, 1)
                    g = measure(gw.url + route, big, 4, watch=gw)
                    g1 = measure(gw.url + route, big, 1)
                    b = measure(bare.url + route, big, 1)
                    per = (g["peak_rss_mb"] - idle) / 4 / size
                    rows.append(
                        (
                            f"{size} MB p50 ms",
                            "≤ 1.2 × direct",
                            d["p50"],
                            g1["p50"],
                            f"{g1['p50'] / d['p50']:.2f} × direct (bare proxy {b['p50'] / d['p50']:.2f} ×); "
                            f"peak RSS {per:.1f} × payload per request",
                        )
                    )
            if only & {"slow", "large"}:
                stop(gw)
            if "slow" in only:
                # The floor for the slow scenario: the bare proxy on the gateway's workers.
                bare_slow = gunicorn("bench.bare_proxy:app", free_port(), None, None,
                                     {"BARE_UPSTREAM": upstream}, tmp, "bare-slow", extra)  # fmt: skip
                servers.append(bare_slow)
                b = measure(bare_slow.url + route, slow, n, plan.slow_seconds)
                slow_row[4] += f"; bare proxy {b['p99'] / d_slow_p99:.2f} × direct"
                stop(bare_slow)
            if bare is not None:
                stop(bare)
            if only & {"edits", "streams", "fast", "open", "cpu"}:
                # The gateway as `make serve` runs it: gunicorn.conf.py's workers and threads.
                def serve_config(limits: str = FULL_LIMITS, access_log: bool = True) -> None:
                    """Its config (large edits need a larger body limit than the default's), or
                    that with parts taken away."""
                    text = gateway_config(tmp, upstream, limits, access_log, body_limit=64 * 2**20)
                    write_config(tmp / "uploads.yaml", text)

                serve_config()
                gw = start("gateway-default", None, None, {"AISIX_CONFIG": str(tmp / "uploads.yaml")})
                if "edits" in only:
                    rows += edit_rows(plan, upstream, gw)
                if only & {"streams", "open", "cpu"}:  # the floor: the bare proxy on the gateway's workers
                    bare_env = {"BARE_UPSTREAM": upstream}
                    bare_default = gunicorn("bench.bare_proxy:app", free_port(), None, None, bare_env, tmp,
                                            "bare-default", extra)  # fmt: skip
                    servers.append(bare_default)
                    if "streams" in only:
                        rows += stream_rows(plan, upstream, gw, bare_default)
                    if "open" in only:
                        rows += open_rows(plan, upstream, gw, bare_default)
                    if "cpu" in only:
                        rows += cpu_rows(plan, upstream, gw, bare_default, serve_config)
                    stop(bare_default)
                if "fast" in only:
                    rows += fast_rows(plan, upstream, gw)
                stop(gw)
        finally:
            for server in servers:
                server.stop()
            fake.stop()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("*.log"):
                    shutil.copy(log, args.logs / log.name)

    when = f"{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores"
    gateways = "; ".join(f"{label}: {setup}" for label, setup in setups.items())
    given = f"--gunicorn-args {shlex.join(extra)!r} appended to each" if extra else "no --gunicorn-args"
    tools = [
        *(["wrk"] if only & WRK_SCENARIOS else []),
        *(["bench/aioload.py"] if only - WRK_SCENARIOS - {"open", "cpu"} else []),
        *(["bench/openloop.py"] if only & {"open", "cpu"} else []),
    ]
    tool = "smoke run, built-in load generators" if plan.smoke else " and ".join(tools)
    per_run = f"{plan.seconds:g} s per run" if only - {"open", "cpu"} else ""
    if "cpu" in only:
        per_run += f"{', ' if per_run else ''}CPU runs of {plan.cpu_seconds:g} s"
    if "open" in only:
        per_run += f"{', ' if per_run else ''}open-loop loads of {plan.open_seconds:g} s"
    print(f"\n{when} · gateway gunicorn ({given}): {gateways} · {tool}, {per_run}\n")
    print("| scenario | target | direct | gateway | result |\n|---|---|---:|---:|---|")
    for scenario, target, d, g, note in rows:
        print(f"| {scenario} | {target} | {d:.2f} | {g:.2f} | {note} |")
    if args.logs:
        print(f"\nlogs: {args.logs}")


if __name__ == "__main__":
    main()
