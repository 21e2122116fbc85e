"""What each feature costs per request, measured in-process (no gunicorn, no profiler overhead).

Starts bench/fake_upstream.py, builds the app with bench/run.py's config (caller keys, a
guardrail, rate limits on SQLite, the ledger, the access log), sends requests through Flask's
test client and times every step of the route with a wrapper, plus the ledger writer thread.

    .venv/bin/python bench/profile.py [--requests 3000]
    .venv/bin/python bench/profile.py --smoke    # a few requests: does the script still work?

Each step is a function the route calls, wrapped by name (STEPS). When the route's code changes, a
step whose function is gone, or no longer called, stops the script with an error naming it.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aisix_flask import create_app, metrics  # noqa: E402
from aisix_flask.proxy import failover, pipeline  # noqa: E402
from aisix_flask.usage.database import LedgerDatabase  # noqa: E402
from bench.config import gateway_config  # noqa: E402
from bench.harness import KEY  # noqa: E402
from tests.serving import free_port  # noqa: E402

spent: dict[str, float] = defaultdict(float)
calls: Counter[str] = Counter()

# label → (where the function is looked up when the route calls it, its name there). "limiter",
# "budgets" and "ledger" stand for this app's instances, which exist only once the app is built.
STEPS: dict[str, tuple[Any, str]] = {
    "auth (caller key)": (pipeline, "authenticate"),
    "body read + JSON": (pipeline, "read_json_object"),
    "validation (marshmallow)": (pipeline, "validate"),
    "alias lookup": (pipeline, "resolve"),
    "guardrails": (pipeline, "check_input"),
    "rate limits: admit": ("limiter", "admit"),
    "rate limits: finish (tokens, slots back)": ("limiter", "finish"),
    "upstream call (incl. the fake's time)": (failover, "send"),
    "answer": (pipeline, "passthrough"),
    "spend: count the cost (every period)": ("budgets", "count"),
    "ledger: queue the row": ("ledger", "record"),
    "metrics": (metrics, "observe"),
    "ledger: insert (writer thread)": (LedgerDatabase, "insert"),
}


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding its time and calls to ``spent`` and ``calls`` under ``name``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started
            calls[name] += 1

    return wrapper


def where(owner: Any, attr: str) -> str:
    """``owner.attr`` as a reader finds it in the source: module or class, then the name."""
    owner_name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None)
    if owner_name is None:  # an instance
        owner_name = f"{type(owner).__module__}.{type(owner).__qualname__}"
    elif isinstance(owner, type):
        owner_name = f"{owner.__module__}.{owner_name}"
    return f"{owner_name}.{attr}"


def wrap_steps(instances: dict[str, Any]) -> dict[str, str]:
    """Wrap every step's function; exit naming the step when its function is gone."""
    names = {}
    for label, (owner, attr) in STEPS.items():
        owner = instances.get(owner, owner) if isinstance(owner, str) else owner
        names[label] = where(owner, attr)
        function = getattr(owner, attr, None)
        if not callable(function):
            sys.exit(
                f"bench/profile.py: step '{label}' times {names[label]}, which does not exist any more; "
                "point the step at the function the route calls now (STEPS in bench/profile.py)"
            )
        setattr(owner, attr, timed(label, function))
    return names


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
    parser.add_argument("--smoke", action="store_true", help="20 requests: does the script still work?")
    args = parser.parse_args()
    n = 20 if args.smoke else args.requests
    warm_up = 5 if args.smoke else min(200, n)
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
            names = wrap_steps(
                {"limiter": gateway.limiter, "budgets": gateway.budgets, "ledger": gateway.ledger}
            )
            client = app.test_client()
            body = {"model": "image-prod", "prompt": args.prompt}
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(warm_up):
                client.post("/v1/images/generations", json=body, headers=headers)
            gateway.ledger.flush(30)
            spent.clear()
            calls.clear()
            statuses: Counter[int] = Counter()
            failed = ""  # the first answer that was not a 200
            started = time.perf_counter()
            for _ in range(n):
                answer = client.post("/v1/images/generations", json=body, headers=headers)
                statuses[answer.status_code] += 1
                if answer.status_code != 200 and not failed:
                    failed = answer.get_data(as_text=True)[:500]
            total = time.perf_counter() - started
            gateway.ledger.flush(30)
            gateway.ledger.close()
    finally:
        fake.terminate()
        fake.wait(10)
    print(f"\n{n} requests in-process; µs per request\n\n| step | µs |\n|---|---:|")
    measured = 0.0
    for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds / n * 1e6:.0f} |")
        if "writer thread" not in label:
            measured += seconds
    print(f"| Flask, hooks (request id, access log), test client | {(total - measured) / n * 1e6:.0f} |")
    print(f"| **total on the request thread** | **{total / n * 1e6:.0f}** |")
    # A profile of error answers, or with steps the route skips, would measure the wrong path.
    if statuses[200] != n:
        sys.exit(f"bench/profile.py: not every request was answered 200: {dict(statuses)}; e.g. {failed}")
    never = [f"'{label}' ({names[label]})" for label in STEPS if not calls[label]]
    if never:
        sys.exit(
            f"bench/profile.py: the route never called step {', '.join(never)}; point the step at "
            "the function the route calls now (STEPS in bench/profile.py)"
        )


if __name__ == "__main__":
    main()
