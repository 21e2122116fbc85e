"""What the gateway adds per request: direct to the fake upstream vs through the gateway, same run.

Starts the loopback fake OpenAI upstream (tests/fake_upstream.py) and the real gunicorn with the
default config shape (caller-key auth, a keyword guardrail, the SQLite ledger), then drives both
with wrk (Debian package ``wrk``) and prints one table. Traffic goes to 127.0.0.1 only, and every
run is bounded by ``--seconds``.

    .venv/bin/python bench/overhead.py [--seconds 5] [--workers 2] [--threads 16]
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


def config_text(tmp: Path, upstream: str) -> str:
    return f"""
gateway:
  usage: {{database_url: "sqlite:///{tmp}/usage.db"}}
provider_keys:
  - {{display_name: openai-main, provider: openai, api_key: sk-bench, api_base: "{upstream}"}}
models:
  - {{display_name: image-prod, provider: openai, model_name: dall-e-3, provider_key: openai-main}}
api_keys:
  - {{display_name: bench, key_env: BENCH_KEY}}
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
        config = tmp / "config.yaml"
        config.write_text(config_text(tmp, upstream))
        gateway = Gunicorn(config, workers=args.workers, threads=args.threads, env={"BENCH_KEY": KEY})
        try:
            prompt = "A minimal illustration of an AI gateway"
            direct_url = f"{upstream}/images/generations"
            gateway_url = f"{gateway.url}/v1/images/generations"
            rows = []
            for connections in (1, 8, 64):
                requests.delete(f"http://127.0.0.1:{port}/_calls", timeout=5)  # keep the fake's memory flat
                d = wrk(direct_url, {"model": "dall-e-3", "prompt": prompt}, connections, args.seconds, tmp)
                g = wrk(
                    gateway_url, {"model": "image-prod", "prompt": prompt}, connections, args.seconds, tmp
                )
                rows.append((connections, d, g))
        finally:
            gateway.stop()
            fake.terminate()
            fake.wait(10)

    print(f"gunicorn gthread {args.workers} workers x {args.threads} threads; wrk {args.seconds} s per run; "
          "fake upstream: tests/fake_upstream.py (one Python process)")  # fmt: skip
    print(f"{'conns':>5}  {'metric':<8} {'direct':>10} {'gateway':>10}  {'gateway/direct':>14}  added")
    for connections, d, g in rows:
        for metric in ("p50", "p99"):
            print(f"{connections:>5}  {metric + ' ms':<8} {d[metric]:>10.2f} {g[metric]:>10.2f}  "
                  f"{g[metric] / d[metric]:>14.2f}  {g[metric] - d[metric]:+.2f} ms")  # fmt: skip
        ratio = g["rps"] / d["rps"]
        print(f"{connections:>5}  {'req/s':<8} {d['rps']:>10.0f} {g['rps']:>10.0f}  {ratio:>14.2f}"
              f"  errors: {d['errors']} / {g['errors']}")  # fmt: skip


if __name__ == "__main__":
    main()
