"""What each feature costs per request, measured in-process (no gunicorn, no profiler overhead).

Starts bench/fake_upstream.py, builds the app with bench/run.py's config (caller keys, a
guardrail, rate limits on SQLite, the ledger, the access log), sends requests through Flask's
test client and times every step of the route with a wrapper, plus the ledger writer thread.
``--stream`` profiles a chat stream instead of an image generation (7 content events and the usage
chunk, no gap between them; 5 ms apart under ``--smoke``): the relay's steps replace the answer's.

    .venv/bin/python bench/profile.py [--requests 3000] [--stream]
    .venv/bin/python bench/profile.py --smoke [--stream]   # a few requests: does it still work?

For where a live worker spends its time under load, py-spy on the gunicorn workers (bench/RESULTS.md,
"Profiling the live workers").

Each step is a function the route calls, wrapped by name (STEPS). When the route's code changes, a
step whose function is gone, or no longer called, stops the script with an error naming it.
"""

from __future__ import annotations

import argparse
import json
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
from aisix_flask.proxy import failover, pipeline, streaming  # noqa: E402
from aisix_flask.proxy.events import UpstreamEvents  # noqa: E402
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
    "spend: count the cost (every period)": ("budgets", "count"),
    "ledger: queue the row": ("ledger", "record"),
    "metrics": (metrics, "observe"),
    "ledger: insert (writer thread)": (LedgerDatabase, "insert"),
}
# The steps of one kind of answer only: a whole one, or a relayed stream.
ANSWER_STEPS: dict[str, tuple[Any, str]] = {"answer": (pipeline, "passthrough")}
STREAM_STEPS: dict[str, tuple[Any, str]] = {
    "stream: the answer's head": (pipeline, "stream_response"),
    "stream: read the upstream's bytes (incl. the fake's time)": (UpstreamEvents, "_next_bytes"),
    "stream: each event read (JSON, usage, guardrails)": (streaming.Relay, "_take"),
}
IMAGE = (
    "/v1/images/generations",
    {"model": "image-prod", "prompt": "A minimal illustration of an AI gateway"},
)
STREAM = (
    "/v1/chat/completions",
    {
        "model": "chat-prod",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Count to seven [gap:0] [chunks:7]"}],
    },
)


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


def wrap_steps(steps: dict[str, tuple[Any, str]], instances: dict[str, Any]) -> dict[str, str]:
    """Wrap every step's function; exit naming the step when its function is gone."""
    names = {}
    for label, (owner, attr) in steps.items():
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
    parser.add_argument("--stream", action="store_true", help="a chat stream instead of an image")
    parser.add_argument("--smoke", action="store_true", help="20 requests: does the script still work?")
    args = parser.parse_args()
    steps = {**STEPS, **(STREAM_STEPS if args.stream else ANSWER_STEPS)}
    route, body = STREAM if args.stream else IMAGE
    if not args.stream:
        body = {**body, "prompt": args.prompt}
    elif args.smoke:
        # Events a moment apart: with none, a busy machine may hand the gateway the whole stream
        # in its first read, and the step that reads the rest would never run.
        body = json.loads(json.dumps(body).replace("[gap:0]", "[gap:0.005]"))
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
                steps, {"limiter": gateway.limiter, "budgets": gateway.budgets, "ledger": gateway.ledger}
            )
            client = app.test_client()
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(warm_up):
                client.post(route, json=body, headers=headers).close()
            gateway.ledger.flush(30)
            spent.clear()
            calls.clear()
            statuses: Counter[int] = Counter()
            failed = ""  # the first answer that was not a 200
            started = time.perf_counter()
            for _ in range(n):
                answer = client.post(route, json=body, headers=headers)
                text = answer.get_data(as_text=True)  # (a stream is relayed as it is read)
                answer.close()  # (and finished when closed)
                statuses[answer.status_code] += 1
                if (answer.status_code != 200 or '"error"' in text) and not failed:
                    failed = text[:500]
            total = time.perf_counter() - started
            gateway.ledger.flush(30)
            gateway.ledger.close()
    finally:
        fake.terminate()
        fake.wait(10)
    what = "chat streams" if args.stream else "image generations"
    print(f"\n{n} {what} in-process; µs per request\n\n| step | µs |\n|---|---:|")
    measured = 0.0
    for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds / n * 1e6:.0f} |")
        if "writer thread" not in label:
            measured += seconds
    print(f"| Flask, hooks (request id, access log), test client | {(total - measured) / n * 1e6:.0f} |")
    print(f"| **total on the request thread** | **{total / n * 1e6:.0f}** |")
    # A profile of error answers, or with steps the route skips, would measure the wrong path.
    if statuses[200] != n or failed:
        sys.exit(f"bench/profile.py: not every request was answered 200: {dict(statuses)}; e.g. {failed}")
    never = [f"'{label}' ({names[label]})" for label in steps if not calls[label]]
    if never:
        sys.exit(
            f"bench/profile.py: the route never called step {', '.join(never)}; point the step at "
            "the function the route calls now (STEPS in bench/profile.py)"
        )


if __name__ == "__main__":
    main()
