"""The gateway against its targets: direct, bare proxy and gateway measured in one run.

Starts bench/fake_upstream.py (asyncio), bench/bare_proxy.py and the gateway (the real gunicorn;
the config shape of a real deployment: caller keys, a keyword guardrail, rate limits on SQLite,
the SQLite ledger, the access log) and drives them with wrk (Debian package ``wrk``). Only
127.0.0.1 is contacted; every run is bounded by its duration.

    .venv/bin/python bench/run.py [--seconds 5] [--quick]
    .venv/bin/python bench/run.py --smoke    # every step once, tiny: what the test suite runs

``--smoke`` proves the script still works, not how fast anything is: a fraction of a second per
load run, a few connections where the real run has 1,000, a 1 MB answer for the 8 and 32 MB ones,
and any failed request ends it with an error. Its load comes from a small built-in generator
(threads + requests) because wrk counts time in whole seconds and may not be installed.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aisix_flask.config import ConfigError, load_config  # noqa: E402
from tests.serving import free_port  # noqa: E402

KEY = "bench-caller-key"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


FULL_LIMITS = "rpm: 100000000, tpm: 1000000000, concurrency: 5000"


def gateway_config(
    tmp: Path, upstream: str, limits: str = FULL_LIMITS, access_log: bool = True, store: str = ""
) -> str:
    """The bench's gateway: rate limits on the key and on the model (none when ``limits`` is
    empty) kept in SQLite (or ``store``), a keyword guardrail, the SQLite ledger, the access log."""
    store = store or f"sqlite:///{tmp}/ratelimit.db"
    limits = f", rate_limit: {{{limits}}}" if limits else ""
    return f"""
gateway:
  access_log: {str(access_log).lower()}
  usage: {{database_url: "sqlite:///{tmp}/usage.db"}}
  ratelimit: {{storage_url: "{store}"}}
provider_keys:
  - {{display_name: openai-main, provider: openai, api_key: sk-bench, api_base: "{upstream}"}}
models:
  - {{display_name: image-prod, provider: openai, model_name: gpt-image-1, provider_key: openai-main{limits}}}
api_keys:
  - {{display_name: bench, key_hash: {hashlib.sha256(KEY.encode()).hexdigest()}{limits}}}
guardrails:
  - name: no-secrets
    kind: keyword
    patterns: [{{kind: regex, value: "(?i)password\\\\s*="}}, {{kind: literal, value: forbidden phrase}}]
"""


# Throughput at c=64 with parts of the config taken away, each beside the bare proxy.
BREAKDOWN = [
    ("limits: rpm + tpm + concurrency", FULL_LIMITS, True),
    ("limits: rpm + tpm (no concurrency slots)", "rpm: 100000000, tpm: 1000000000", True),
    ("no rate limits", "", True),
    ("no rate limits, no access log", "", False),
]


REDIS_STORE = "redis://127.0.0.1:6379/15"


def write_config(path: Path, text: str) -> None:
    """Write a gateway config and check it as the gateway will: a live edit the gateway rejects
    would leave it serving the previous config, and the row would measure the wrong thing."""
    path.write_text(text)
    try:
        registry = load_config(str(path))
    except ConfigError as e:
        sys.exit(f"the bench's config {path.name} is broken: {'; '.join(e.problems)}")
    if registry.warnings:
        sys.exit(
            f"the bench's config {path.name} has fields the gateway ignores: {'; '.join(registry.warnings)}"
        )


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Server:
    """A process serving on a loopback port; stopped with SIGTERM."""

    def __init__(self, command: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/livez", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"{command} did not start:\n{log.read_text()}")

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (gunicorn's workers), in MB."""
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        pids = [self.process.pid, *map(int, children.stdout.split())]
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            except (OSError, AttributeError):
                pass
        return total / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def gunicorn(
    app: str, port: int, workers: int, threads: int, env: dict[str, str], tmp: Path, name: str
) -> Server:
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prometheus-{name}")}
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}",
               "-w", str(workers), "--threads", str(threads), app]  # fmt: skip
    return Server(command, port, env, tmp / f"{name}.log")


@dataclass(frozen=True)
class Plan:
    """How big each part of the run is: the real sizes, or the smoke run's."""

    seconds: float  # per load run
    workers: int
    threads: int
    reload_wait_s: float  # after a live config edit: each worker looks at the file once a second
    slow_connections: int
    slow_sleep_s: float
    slow_seconds: float
    slow_workers: int
    slow_threads: int
    sizes_mb: tuple[int, ...]
    smoke: bool = False


def plan_for(args: argparse.Namespace) -> Plan:
    """The real run's sizes from the command line, or the smoke run's fixed tiny ones."""
    if args.smoke:
        # No wait after a config edit: the smoke run's figures mean nothing, write_config has
        # checked that the gateway accepts the file, and live reloading has tests of its own.
        return Plan(seconds=0.1, workers=2, threads=4, reload_wait_s=0, slow_connections=8,
                    slow_sleep_s=0.1, slow_seconds=0.3, slow_workers=1, slow_threads=8, sizes_mb=(1,),
                    smoke=True)  # fmt: skip
    return Plan(seconds=args.seconds, workers=args.workers, threads=args.threads, reload_wait_s=2.5,
                slow_connections=1000, slow_sleep_s=5, slow_seconds=12, slow_workers=4, slow_threads=256,
                sizes_mb=(8, 32))  # fmt: skip


@contextmanager
def peak_rss(watch: Server | None) -> Iterator[list[float]]:
    """Sample ``watch``'s RSS every 0.1 s while the block runs; the peak is in the list it yields."""
    peak = [0.0]
    if watch is None:
        yield peak
        return
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], watch.rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        if not peak[0]:  # a run shorter than the sampling period (smoke) still gets a figure
            peak[0] = watch.rss_mb()


def wrk(url: str, body: dict, connections: int, seconds: float, tmp: Path) -> dict:
    """Drive ``url`` with wrk: p50/p99 (ms), requests per second, failures."""
    script = tmp / "post.lua"
    script.write_text(LUA.format(body=json.dumps(json.dumps(body)), key=KEY))
    command = ["wrk", "-t", str(min(connections, 4)), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", "60s", "--latency", "-s", str(script), url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    """wrk's ``--latency`` report as p50/p99 (ms), requests per second and failed requests."""
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        result[f"p{pct}"] = float(value) * _UNITS[unit]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["failed"] = (sum(map(int, errors.groups())) if errors else 0) + (
        int(non2xx.group(1)) if non2xx else 0
    )
    return result


def pyload(url: str, body: dict, connections: int, seconds: float, max_requests: int = 2000) -> dict:
    """wrk's figures from threads + requests, for the smoke run: at most ``max_requests``, sent
    during ``seconds`` (a request in flight then is waited for), to 127.0.0.1 only."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"{url}: the benchmark sends traffic to 127.0.0.1 only")
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    tickets = itertools.count()  # one per request sent; next() on it is atomic under the GIL
    latencies: list[float] = []  # ms of every answer, as wrk counts them (errors included)
    failed: list[str] = []  # like wrk: socket errors, timeouts and answers that are not 2xx or 3xx
    started = time.perf_counter()
    deadline = started + seconds

    def client() -> None:
        with requests.Session() as session:
            session.trust_env = False  # no proxy from the environment: straight to 127.0.0.1
            while time.perf_counter() < deadline and next(tickets) < max_requests:
                sent = time.perf_counter()
                try:
                    response = session.post(url, data=payload, headers=headers, timeout=(5, 60))
                except requests.RequestException as e:
                    failed.append(type(e).__name__)
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                if response.status_code >= 400:
                    failed.append(f"{response.status_code} {response.text[:200]}")

    clients = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    elapsed = time.perf_counter() - started
    if not latencies:
        raise RuntimeError(f"no request to {url} was answered: {failed[:3]}")
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[max(0, math.ceil(q / 100 * len(latencies)) - 1)]

    return {"rps": len(latencies) / elapsed, "p50": percentile(50), "p99": percentile(99),
            "failed": len(failed), "failures": failed}  # fmt: skip


def load(
    url: str,
    body: dict,
    connections: int,
    seconds: float,
    tmp: Path,
    smoke: bool,
    watch: Server | None = None,
) -> dict:
    """p50/p99 (ms), requests per second, failures; with ``watch``, its peak RSS during the run.

    wrk for real runs; the built-in generator for ``smoke``, where a failed request is a broken
    script or gateway and ends the run."""
    with peak_rss(watch) as peak:
        result = (
            pyload(url, body, connections, seconds) if smoke else wrk(url, body, connections, seconds, tmp)
        )
    result["peak_rss_mb"] = peak[0]
    if smoke and result["failed"]:
        sys.exit(f"smoke run: {result['failed']} requests to {url} failed, e.g. {result['failures'][0]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for the latency runs")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument(
        "--quick", action="store_true", help="skip the 1,000-connection and large-answer runs"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="every step once, tiny, no wrk needed: does the script work?"
    )
    args = parser.parse_args()
    plan = plan_for(args)
    if not plan.smoke and not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")

    rows: list[tuple[str, str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)

        def measure(
            url: str, body: dict, connections: int, seconds: float = plan.seconds, watch: Server | None = None
        ) -> dict:
            return load(url, body, connections, seconds, tmp, plan.smoke, watch)

        fake_port = free_port()
        fake = Server(
            [sys.executable, "bench/fake_upstream.py", "--port", str(fake_port)],
            fake_port,
            {},
            tmp / "fake.log",
        )
        upstream = f"http://127.0.0.1:{fake_port}/v1"
        write_config(tmp / "config.yaml", gateway_config(tmp, upstream))
        env = {"AISIX_CONFIG": str(tmp / "config.yaml")}
        direct = f"{upstream}/images/generations"
        small = {"model": "image-prod", "prompt": "A minimal illustration of an AI gateway"}
        servers = []
        try:
            bare = gunicorn("bench.bare_proxy:app", free_port(), plan.workers, plan.threads,
                            {"BARE_UPSTREAM": upstream}, tmp, "bare")  # fmt: skip
            gw = gunicorn("wsgi:app", free_port(), plan.workers, plan.threads, env, tmp, "gateway")
            servers += [bare, gw]
            route = "/v1/images/generations"
            for c in (1, 8, 64):
                d = measure(direct, small, c)
                b = measure(bare.url + route, small, c)
                g = measure(gw.url + route, small, c)
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
            if not args.quick:
                # What each part costs: the same gateway, its config edited (reloaded live).
                for label, limits, access_log in BREAKDOWN:
                    write_config(tmp / "config.yaml", gateway_config(tmp, upstream, limits, access_log))
                    time.sleep(plan.reload_wait_s)
                    b = measure(bare.url + route, small, 64)
                    g = measure(gw.url + route, small, 64)
                    share = f"gateway {g['rps'] / b['rps']:.0%} of bare (bare in the direct column)"
                    rows.append((f"c=64 req/s, {label}", "", b["rps"], g["rps"], share))
                write_config(tmp / "config.yaml", gateway_config(tmp, upstream))
                if redis_answers():  # the multi-host store; a store URL needs a restart
                    write_config(tmp / "redis.yaml", gateway_config(tmp, upstream, store=REDIS_STORE))
                    redis_env = {"AISIX_CONFIG": str(tmp / "redis.yaml")}
                    gw_redis = gunicorn("wsgi:app", free_port(), plan.workers, plan.threads,
                                        redis_env, tmp, "gateway-redis")  # fmt: skip
                    servers.append(gw_redis)
                    b = measure(bare.url + route, small, 64)
                    g = measure(gw_redis.url + route, small, 64)
                    share = f"gateway {g['rps'] / b['rps']:.0%} of bare (bare in the direct column)"
                    rows.append(("c=64 req/s, limits: all three, on Redis", "", b["rps"], g["rps"], share))
                    gw_redis.stop()
                    servers.remove(gw_redis)
            gw.stop()  # the bare proxy stays: the large answers are measured through it too
            servers.remove(gw)
            if not args.quick:
                n, sleep = plan.slow_connections, plan.slow_sleep_s
                slow_setup = f"{plan.slow_workers} workers × {plan.slow_threads} threads"
                slow = {"model": "image-prod", "prompt": f"[sleep:{sleep:g}] a slow generation"}
                gw = gunicorn("wsgi:app", free_port(), plan.slow_workers, plan.slow_threads, env, tmp,
                              "gateway-slow")  # fmt: skip
                servers.append(gw)
                d = measure(direct, {**slow, "model": "gpt-image-1"}, n, plan.slow_seconds)
                d_slow_p99 = d["p99"]
                g = measure(gw.url + route, slow, n, plan.slow_seconds, watch=gw)
                failed = f"failed {d['failed']} / {g['failed']}"
                slow_row = [f"{n} × {sleep:g} s p99 ms", "≤ 1.1 × direct", d["p99"], g["p99"],
                            f"{g['p99'] / d['p99']:.2f} × direct; {failed}"]  # fmt: skip
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
                gw.stop()
                # The floor for the slow scenario: the bare proxy, same workers and threads.
                bare_slow = gunicorn("bench.bare_proxy:app", free_port(), plan.slow_workers,
                                     plan.slow_threads, {"BARE_UPSTREAM": upstream}, tmp,
                                     "bare-slow")  # fmt: skip
                servers.append(bare_slow)
                b = measure(bare_slow.url + route, slow, n, plan.slow_seconds)
                slow_row[4] += f"; bare proxy {b['p99'] / d_slow_p99:.2f} × direct"
        finally:
            for server in servers:
                server.stop()
            fake.stop()

    worker = "aisix_flask.worker.ThreadWorker"
    many = f"{plan.slow_connections}-connection run: {plan.slow_workers}×{plan.slow_threads}"
    setup = f"gunicorn {worker} {plan.workers}×{plan.threads} ({many})"
    tool = "smoke run, built-in load generator" if plan.smoke else "wrk"
    when = f"{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores"
    print(f"\n{when} · {setup} · {tool} {plan.seconds:g} s per run\n")
    print("| scenario | target | direct | gateway | result |\n|---|---|---:|---:|---|")
    for scenario, target, d, g, note in rows:
        print(f"| {scenario} | {target} | {d:.2f} | {g:.2f} | {note} |")


if __name__ == "__main__":
    main()
