"""What each feature costs per request, measured in-process (no gunicorn, no profiler overhead).

Starts bench/fake_upstream.py, builds the app with bench/run.py's config (caller keys, a
guardrail, rate limits on SQLite, the ledger, the access log), sends requests through Flask's
test client and times every step of the route with a wrapper, plus the ledger writer thread.

    .venv/bin/python bench/profile.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import KEY, gateway_config  # noqa: E402

from aisix_flask import create_app, images, ledger, metrics  # noqa: E402
from tests.serving import free_port  # noqa: E402

spent: dict[str, float] = defaultdict(float)


def timed(name: str, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--prompt",
        default="A minimal illustration of an AI gateway",
        help="steers the fake upstream: '[b64:8mb]' profiles an 8 MB answer",
    )
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(ROOT / "bench/fake_upstream.py"), "--port", str(port)])
    try:
        for _ in range(50):
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            (tmp / "config.yaml").write_text(gateway_config(tmp, f"http://127.0.0.1:{port}/v1"))
            logging.getLogger("aisix_flask.access").disabled = False
            app = create_app({"AISIX_CONFIG": str(tmp / "config.yaml")})
            gateway = app.extensions["aisix"]
            steps = {
                "auth (caller key)": (images, "authenticate"),
                "body read + JSON": (images, "read_json_object"),
                "validation (marshmallow)": (images, "validate"),
                "alias lookup": (images, "resolve"),
                "guardrails": (images, "check_input"),
                "rate limits: admit": (gateway.limiter, "admit"),
                "rate limits: release": (gateway.limiter, "release"),
                "rate limits: charge": (gateway.limiter, "charge"),
                "upstream call (incl. the fake's time)": (images, "forward"),
                "answer": (images, "passthrough"),
                "ledger: queue the row": (gateway.ledger, "record"),
                "metrics": (metrics, "observe"),
            }
            for label, (owner, attr) in steps.items():
                setattr(owner, attr, timed(label, getattr(owner, attr)))
            ledger.Ledger._write = timed("ledger: insert (writer thread)", ledger.Ledger._write)
            client = app.test_client()
            body = {"model": "image-prod", "prompt": args.prompt}
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(min(200, args.requests)):
                client.post("/v1/images/generations", json=body, headers=headers)
            gateway.ledger.flush(30)
            spent.clear()
            started = time.perf_counter()
            for _ in range(args.requests):
                client.post("/v1/images/generations", json=body, headers=headers)
            total = time.perf_counter() - started
            gateway.ledger.flush(30)
            gateway.ledger.close()
    finally:
        fake.terminate()
    n = args.requests
    print(f"\n{n} requests in-process; µs per request\n\n| step | µs |\n|---|---:|")
    measured = 0.0
    for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds / n * 1e6:.0f} |")
        if "writer thread" not in label:
            measured += seconds
    print(f"| Flask, hooks (request id, access log), test client | {(total - measured) / n * 1e6:.0f} |")
    print(f"| **total on the request thread** | **{total / n * 1e6:.0f}** |")


if __name__ == "__main__":
    main()
