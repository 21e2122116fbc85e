"""The gateway against its targets: direct, bare proxy and gateway measured in one run.

Starts bench/fake_upstream.py (asyncio), bench/bare_proxy.py and the gateway (the real gunicorn;
the config shape of a real deployment: caller keys, a keyword guardrail, rate limits on SQLite,
the SQLite ledger, the access log) and drives them with wrk (Debian package ``wrk``). Only
127.0.0.1 is contacted; every run is bounded by its duration.

    .venv/bin/python bench/run.py [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def wrk(
    url: str, body: dict, connections: int, seconds: float, tmp: Path, watch: Server | None = None
) -> dict:
    """p50/p99 (ms), requests per second, failures; with ``watch``, its peak RSS during the run."""
    script = tmp / "post.lua"
    script.write_text(LUA.format(body=json.dumps(json.dumps(body)), key=KEY))
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], watch.rss_mb())

    if watch:
        threading.Thread(target=sample, daemon=True).start()
    command = ["wrk", "-t", str(min(connections, 4)), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", "60s", "--latency", "-s", str(script), url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, check=True).stdout
    done.set()
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "peak_rss_mb": peak[0]}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        result[f"p{pct}"] = float(value) * _UNITS[unit]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["failed"] = (sum(map(int, errors.groups())) if errors else 0) + (
        int(non2xx.group(1)) if non2xx else 0
    )
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
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")

    rows: list[tuple[str, str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        fake_port = free_port()
        fake = Server(
            [sys.executable, "bench/fake_upstream.py", "--port", str(fake_port)],
            fake_port,
            {},
            tmp / "fake.log",
        )
        upstream = f"http://127.0.0.1:{fake_port}/v1"
        (tmp / "config.yaml").write_text(gateway_config(tmp, upstream))
        env = {"AISIX_CONFIG": str(tmp / "config.yaml")}
        direct = f"{upstream}/images/generations"
        small = {"model": "image-prod", "prompt": "A minimal illustration of an AI gateway"}
        servers = []
        try:
            bare = gunicorn("bench.bare_proxy:app", free_port(), args.workers, args.threads,
                            {"BARE_UPSTREAM": upstream}, tmp, "bare")  # fmt: skip
            gw = gunicorn("wsgi:app", free_port(), args.workers, args.threads, env, tmp, "gateway")
            servers += [bare, gw]
            route = "/v1/images/generations"
            for c in (1, 8, 64):
                d = wrk(direct, small, c, args.seconds, tmp)
                b = wrk(bare.url + route, small, c, args.seconds, tmp)
                g = wrk(gw.url + route, small, c, args.seconds, tmp)
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
                    (tmp / "config.yaml").write_text(gateway_config(tmp, upstream, limits, access_log))
                    time.sleep(2.5)
                    b = wrk(bare.url + route, small, 64, args.seconds, tmp)
                    g = wrk(gw.url + route, small, 64, args.seconds, tmp)
                    share = f"gateway {g['rps'] / b['rps']:.0%} of bare (bare in the direct column)"
                    rows.append((f"c=64 req/s, {label}", "", b["rps"], g["rps"], share))
                (tmp / "config.yaml").write_text(gateway_config(tmp, upstream))
                if redis_answers():  # the multi-host store; a store URL needs a restart
                    (tmp / "redis.yaml").write_text(gateway_config(tmp, upstream, store=REDIS_STORE))
                    redis_env = {"AISIX_CONFIG": str(tmp / "redis.yaml")}
                    gw_redis = gunicorn("wsgi:app", free_port(), args.workers, args.threads,
                                        redis_env, tmp, "gateway-redis")  # fmt: skip
                    servers.append(gw_redis)
                    b = wrk(bare.url + route, small, 64, args.seconds, tmp)
                    g = wrk(gw_redis.url + route, small, 64, args.seconds, tmp)
                    share = f"gateway {g['rps'] / b['rps']:.0%} of bare (bare in the direct column)"
                    rows.append(("c=64 req/s, limits: all three, on Redis", "", b["rps"], g["rps"], share))
                    gw_redis.stop()
                    servers.remove(gw_redis)
            gw.stop()  # the bare proxy stays: the large answers are measured through it too
            servers.remove(gw)
            if not args.quick:
                slow = {"model": "image-prod", "prompt": "[sleep:5] a slow generation"}
                gw = gunicorn("wsgi:app", free_port(), 4, 256, env, tmp, "gateway-slow")
                servers.append(gw)
                d = wrk(direct, {**slow, "model": "gpt-image-1"}, 1000, 12, tmp)
                d_slow_p99 = d["p99"]
                g = wrk(gw.url + route, slow, 1000, 12, tmp, watch=gw)
                failed = f"failed {d['failed']} / {g['failed']}"
                slow_row = ["1000 × 5 s p99 ms", "≤ 1.1 × direct", d["p99"], g["p99"],
                            f"{g['p99'] / d['p99']:.2f} × direct; {failed}"]  # fmt: skip
                rows.append(slow_row)
                rows.append(
                    (
                        "1000 × 5 s RSS MB",
                        "≤ 400 MB",
                        0,
                        g["peak_rss_mb"],
                        "all gateway processes, peak (4 workers × 256 threads)",
                    )
                )
                for size in (8, 32):
                    big = {"model": "image-prod", "prompt": f"[b64:{size}mb]"}
                    idle = gw.rss_mb()
                    d = wrk(direct, big, 1, args.seconds, tmp)
                    g = wrk(gw.url + route, big, 4, args.seconds, tmp, watch=gw)
                    g1 = wrk(gw.url + route, big, 1, args.seconds, tmp)
                    b = wrk(bare.url + route, big, 1, args.seconds, tmp)
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
                bare_slow = gunicorn("bench.bare_proxy:app", free_port(), 4, 256,
                                     {"BARE_UPSTREAM": upstream}, tmp, "bare-slow")  # fmt: skip
                servers.append(bare_slow)
                b = wrk(bare_slow.url + route, slow, 1000, 12, tmp)
                slow_row[4] += f"; bare proxy {b['p99'] / d_slow_p99:.2f} × direct"
        finally:
            for server in servers:
                server.stop()
            fake.stop()

    worker = "aisix_flask.worker.ThreadWorker"
    setup = f"gunicorn {worker} {args.workers}×{args.threads} (1000-connection run: 4×256)"
    print(
        f"\n{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores · {setup} · wrk {args.seconds:g} s per run\n"
    )
    print("| scenario | target | direct | gateway | result |\n|---|---|---:|---:|---|")
    for scenario, target, d, g, note in rows:
        print(f"| {scenario} | {target} | {d:.2f} | {g:.2f} | {note} |")


if __name__ == "__main__":
    main()
