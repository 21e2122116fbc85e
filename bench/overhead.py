"""What the gateway adds per request: direct to the fake upstream vs through the gateway, same run.

Starts the loopback fake OpenAI upstream (tests/fake_upstream.py) and the real gunicorn with the
default config shape (caller-key auth, a keyword guardrail, the SQLite ledger), then drives both
with wrk (Debian package ``wrk``) and prints one table. ``--limits`` adds two more gateways with
rate limits on the key and the model (rpm, tpm, concurrency), on SQLite and on Redis
(redis://127.0.0.1:6379/13), to show what the limiter costs. Traffic goes to 127.0.0.1 only,
and every run is bounded by ``--seconds``.

    .venv/bin/python bench/overhead.py [--seconds 5] [--workers 2] [--threads 16] [--limits]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.serving import Gunicorn, free_port  # noqa: E402

KEY = "bench-caller-key"
LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


LIMITS = "rate_limit: {rpm: 10000000, tpm: 100000000, concurrency: 1000}"


def config_text(tmp: Path, upstream: str, storage_url: str | None = None) -> str:
    limits = f", {LIMITS}" if storage_url else ""
    storage_url = storage_url or f"sqlite:///{tmp}/ratelimit.db"
    return f"""
gateway:
  usage: {{database_url: "sqlite:///{tmp}/usage.db"}}
  ratelimit: {{storage_url: "{storage_url}"}}
provider_keys:
  - {{display_name: openai-main, provider: openai, api_key: sk-bench, api_base: "{upstream}"}}
models:
  - {{display_name: image-prod, provider: openai, model_name: dall-e-3, provider_key: openai-main{limits}}}
api_keys:
  - {{display_name: bench, key_env: BENCH_KEY{limits}}}
guardrails:
  - name: no-secrets
    kind: keyword
    patterns: [{{kind: regex, value: "(?i)password\\\\s*="}}, {{kind: literal, value: forbidden phrase}}]
"""


def wrk(url: str, body: dict, connections: int, seconds: int, tmp: Path) -> dict[str, float]:
    """Run wrk against ``url``; return p50/p99 latency (ms) and requests per second."""
    script = tmp / "post.lua"
    script.write_text(LUA.format(body=json.dumps(json.dumps(body)), key=KEY))
    out = subprocess.run(
        ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds}s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        result[f"p{pct}"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(errors.group(1)) if errors else 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--limits", action="store_true", help="also measure gateways with rate limits")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port = free_port()
        fake = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
        )
        upstream = f"http://127.0.0.1:{port}/v1"
        for _ in range(50):
            try:
                requests.get(f"http://127.0.0.1:{port}/_calls", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        variants = {"gateway": None}
        if args.limits:
            variants["+limits sqlite"] = f"sqlite:///{tmp}/ratelimit.db"
            variants["+limits redis"] = "redis://127.0.0.1:6379/13"
        prompt = "A minimal illustration of an AI gateway"
        results: dict[int, dict[str, dict[str, float]]] = {c: {} for c in (1, 8, 64)}
        try:
            for connections in results:
                requests.delete(f"http://127.0.0.1:{port}/_calls", timeout=5)  # keep the fake's memory flat
                body = {"model": "dall-e-3", "prompt": prompt}
                results[connections]["direct"] = wrk(
                    f"{upstream}/images/generations", body, connections, args.seconds, tmp
                )
            for name, storage_url in variants.items():
                (tmp / name).mkdir()
                config = tmp / name / "config.yaml"
                config.write_text(config_text(tmp / name, upstream, storage_url))
                gateway = Gunicorn(config, workers=args.workers, threads=args.threads, env={"BENCH_KEY": KEY})
                try:
                    for connections in results:
                        requests.delete(f"http://127.0.0.1:{port}/_calls", timeout=5)
                        body = {"model": "image-prod", "prompt": prompt}
                        url = f"{gateway.url}/v1/images/generations"
                        results[connections][name] = wrk(url, body, connections, args.seconds, tmp)
                finally:
                    gateway.stop()
                if storage_url and storage_url.startswith("redis"):
                    import redis

                    redis.Redis.from_url(storage_url).flushdb()
        finally:
            fake.terminate()
            fake.wait(10)

    print(f"gunicorn gthread {args.workers} workers x {args.threads} threads; wrk {args.seconds} s per run; "
          "fake upstream: tests/fake_upstream.py (one Python process)")  # fmt: skip
    names = ["direct", *variants]
    print(f"{'conns':>5}  {'metric':<8}" + "".join(f"{n:>16}" for n in names) + "   (ratio to direct)")
    for connections, row in results.items():
        direct = row["direct"]
        for metric, unit in (("p50", "ms"), ("p99", "ms"), ("rps", "req/s")):
            cells = "".join(
                f"{row[n][metric]:>9.2f} ({row[n][metric] / direct[metric]:>4.1f})" if n != "direct"
                else f"{direct[metric]:>16.2f}"
                for n in names
            )  # fmt: skip
            print(f"{connections:>5}  {metric + ' ' + unit:<8}{cells}")
        errors = {n: row[n]["errors"] for n in names if row[n]["errors"]}
        if errors:
            print(f"{connections:>5}  non-2xx: {errors}")
    for name in variants:
        if name != "gateway":
            added = results[1][name]["p50"] - results[1]["gateway"]["p50"]
            print(f"limiter cost at c=1 ({name}): {added:+.2f} ms p50")


if __name__ == "__main__":
    main()
