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
of the config taken away), ``redis`` (the limits on Redis, when one answers on 6379), ``slow``
(1,000 concurrent 5 s generations and the memory they take), ``large`` (8 and 32 MB answers), and
three on the gateway as ``make serve`` runs it (gunicorn.conf.py, no -w/--threads), driven by
bench/aioload.py instead of wrk: ``edits`` (4 × 4 MB image edits at c=1 and c=4, and the memory
each in-flight edit takes), ``streams`` (1,000 concurrent ~2 s chat streams) and ``fast`` (c=8
small requests while 1,000 slow generations hold the gateway). ``--gunicorn-args`` is appended to
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
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aisix_flask.config import ConfigError, load_config  # noqa: E402
from bench import aioload  # noqa: E402
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
    tmp: Path,
    upstream: str,
    limits: str = FULL_LIMITS,
    access_log: bool = True,
    store: str = "",
    body_limit: int | None = None,
) -> str:
    """The bench's gateway: priced models, rate limits on the key and on each model (none when
    ``limits`` is empty) kept in SQLite (or ``store``), a keyword guardrail, the SQLite ledger,
    the access log;
    ``body_limit`` raises request_body_limit_bytes (large image edits)."""
    store = store or f"sqlite:///{tmp}/ratelimit.db"
    limits = f", rate_limit: {{{limits}}}" if limits else ""
    body = f"\n  request_body_limit_bytes: {body_limit}" if body_limit else ""
    return f"""
gateway:
  access_log: {str(access_log).lower()}{body}
  usage: {{database_url: "sqlite:///{tmp}/usage.db"}}
  ratelimit: {{storage_url: "{store}"}}
provider_keys:
  - {{display_name: openai-main, provider: openai, api_key: sk-bench, api_base: "{upstream}"}}
models:
  - {{display_name: image-prod, provider: openai, model_name: gpt-image-1, provider_key: openai-main{limits},
      pricing: {{per_million_tokens: {{input_text: 5, input_image: 10, output_image: 40}}}}}}
  - {{display_name: chat-prod, provider: openai, model_name: gpt-4o-mini, provider_key: openai-main{limits},
      pricing: {{per_million_tokens: {{input: 0.15, output: 0.6}}}}}}
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
        pid = self.process.pid
        try:  # without a pgrep process per sample, where the kernel lists children
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids = [pid, *map(int, children.split())]
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
            self.process.wait(10)


def gunicorn_args(
    port: int, workers: int | None, threads: int | None, extra: Sequence[str] = ()
) -> list[str]:
    """gunicorn's options: gunicorn.conf.py, the port, the sizes (none: the file's) and ``extra``
    last, so that it wins over the sizes (gunicorn takes the last of a repeated option)."""
    sizes = ["-w", str(workers), "--threads", str(threads)] if workers else []
    return ["-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", *sizes, *extra]


def gunicorn(
    app: str,
    port: int,
    workers: int | None,
    threads: int | None,
    env: dict[str, str],
    tmp: Path,
    name: str,
    extra: Sequence[str] = (),
) -> Server:
    """``app`` under the real gunicorn on ``port``; ``workers`` None keeps gunicorn.conf.py's sizes."""
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prometheus-{name}")}
    command = [sys.executable, "-m", "gunicorn", *gunicorn_args(port, workers, threads, extra), app]
    return Server(command, port, env, tmp / f"{name}.log")


# Run in a fresh interpreter: gunicorn reads the config file (which sets environment variables)
# and the command line exactly as it will for the server, GUNICORN_CMD_ARGS included.
_PROBE = """
import json, sys
from gunicorn.app.wsgiapp import WSGIApplication
found = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["gunicorn", *argv, "wsgi:app"]
    cfg = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
    found.append([cfg.worker_class_str, cfg.workers, cfg.threads, cfg.worker_connections])
print(json.dumps(found))
"""


def probe_gunicorn(variants: dict[str, list[str]]) -> Callable[[], dict[str, str]]:
    """Start asking gunicorn what it makes of each command line; the function returned waits for
    the answer: the worker class and workers × threads (or × connections, for an event-loop
    worker), by label. It exits when gunicorn refuses the options."""
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, json.dumps(list(variants.values()))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def setups() -> dict[str, str]:
        try:
            out, err = probe.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
            sys.exit("gunicorn took over 60 s to read its options")
        if probe.returncode:
            sys.exit(f"gunicorn does not accept the options {list(variants.values())}:\n{err[-2000:]}")
        return {label: _setup(*found) for label, found in zip(variants, json.loads(out), strict=True)}

    return setups


def _setup(uri: str, workers: int, threads: int, connections: int) -> str:
    # gunicorn's own rule: the sync worker with more than one thread is gthread.
    if uri in ("sync", "gunicorn.workers.sync.SyncWorker") and threads > 1:
        uri = "gthread"
    if any(loop in uri.lower() for loop in ("gevent", "eventlet", "tornado")):
        return f"{uri} {workers} × {connections} connections"
    return f"{uri} {workers} × {threads} threads"


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
    # The scenarios on the default gunicorn config (bench/aioload.py):
    edit_images: int  # files in one edit
    edit_image_bytes: int
    edit_connections: int  # edits in flight for the memory figure
    stream_connections: int
    memory_streams: int  # chat streams in flight for the memory figure
    stream_seconds: float
    stream_gap_s: float  # between two content chunks (7 of them)
    fast_connections: int  # small requests while the slow_* load runs
    fast_delay_s: float  # after the slow load starts, so that it is in flight
    fast_seconds: float
    timeout_s: float  # a request unanswered this long fails (wrk's --timeout in the other rows)
    smoke: bool = False


def plan_for(args: argparse.Namespace) -> Plan:
    """The real run's sizes from the command line, or the smoke run's fixed tiny ones."""
    if args.smoke:
        # No wait after a config edit: the smoke run's figures mean nothing, write_config has
        # checked that the gateway accepts the file, and live reloading has tests of its own.
        return Plan(seconds=0.1, workers=2, threads=4, reload_wait_s=0, slow_connections=8,
                    slow_sleep_s=0.1, slow_seconds=0.2, slow_workers=1, slow_threads=8, sizes_mb=(1,),
                    edit_images=2, edit_image_bytes=256 * 1024, edit_connections=2,
                    stream_connections=20, memory_streams=10, stream_seconds=0.1, stream_gap_s=0.02,
                    fast_connections=2, fast_delay_s=0.1, fast_seconds=0.1, timeout_s=10,
                    smoke=True)  # fmt: skip
    return Plan(seconds=args.seconds, workers=args.workers, threads=args.threads, reload_wait_s=2.5,
                slow_connections=1000, slow_sleep_s=5, slow_seconds=12, slow_workers=4, slow_threads=256,
                sizes_mb=(8, 32), edit_images=4, edit_image_bytes=4 * 1024 * 1024, edit_connections=4,
                stream_connections=1000, memory_streams=100, stream_seconds=12, stream_gap_s=0.3,
                fast_connections=8, fast_delay_s=2, fast_seconds=9, timeout_s=60)  # fmt: skip


@contextmanager
def peak_rss(watch: Server | None, period_s: float = 0.1) -> Iterator[list[float]]:
    """Sample ``watch``'s RSS every ``period_s`` while the block runs; the peak is in the list it yields."""
    peak = [0.0]
    if watch is None:
        yield peak
        return
    done = threading.Event()

    def sample() -> None:
        while not done.wait(period_s):
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


Row = tuple[str, str, float, float, str]
SCENARIOS = ("latency", "chat", "breakdown", "redis", "slow", "large", "edits", "streams", "fast")
# Measured with wrk in real runs (chat: its answers that are not streamed); the others use
# bench/aioload.py.
WRK_SCENARIOS = frozenset(("latency", "chat", "breakdown", "redis", "slow", "large"))
IMAGES, CHAT = "/v1/images/generations", "/v1/chat/completions"
SMALL = {"model": "image-prod", "prompt": "A minimal illustration of an AI gateway"}
SMALL_CHAT = {"model": "chat-prod", "messages": [{"role": "user", "content": "Say hello [chunks:3]"}]}


def checked(result: dict, what: str, smoke: bool) -> dict:
    """``result``; in a smoke run a failed request is a broken script or gateway and ends the run."""
    if smoke and result["failed"]:
        sys.exit(f"smoke run: {result['failed']} of the {what} failed: {result['failures']}")
    return result


def edit_form(model: str, images: int, image_bytes: int) -> tuple[bytes, str]:
    """A multipart image edit as the official client sends it (model, prompt, files in image[])
    and its Content-Type. The images are random bytes: as incompressible as real PNGs."""
    boundary = f"bench-{os.urandom(12).hex()}"
    parts = [
        f'Content-Disposition: form-data; name="model"\r\n\r\n{model}'.encode(),
        b'Content-Disposition: form-data; name="prompt"\r\n\r\nAdd a red hat to every cat',
    ]
    for i in range(images):
        disposition = f'Content-Disposition: form-data; name="image[]"; filename="cat{i}.png"'
        parts.append(f"{disposition}\r\nContent-Type: image/png\r\n\r\n".encode() + os.urandom(image_bytes))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def edit_rows(plan: Plan, upstream: str, gw: Server) -> list[Row]:
    """Image edits with ``edit_images`` files: p50 at c=1 and c=``edit_connections``, direct and
    through the gateway, and the gateway's peak RSS growth per in-flight edit, in uploads."""
    k, mb = plan.edit_images, plan.edit_image_bytes / 2**20
    name = f"edit {k} × {mb:g} MB"
    direct = edit_form("gpt-image-1", k, plan.edit_image_bytes)
    through = edit_form("image-prod", k, plan.edit_image_bytes)
    upload_mb = len(through[0]) / 2**20

    def edits(
        url: str, form: tuple[bytes, str], connections: int, what: str, max_requests: int | None = None
    ) -> dict:
        body, content_type = form
        result = aioload.run(
            url,
            body,
            connections=connections,
            seconds=plan.seconds,
            content_type=content_type,
            timeout=plan.timeout_s,
            max_requests=max_requests,
            key=KEY,
        )
        return checked(result, what, plan.smoke)

    # One edit first, so that idle RSS includes what any first request loads (code, pools).
    edits(gw.url + "/v1/images/edits", through, 1, "warm-up edit", max_requests=1)
    idle = gw.rss_mb()
    rows: list[Row] = []
    for c in (1, plan.edit_connections):
        d = edits(f"{upstream}/images/edits", direct, c, f"direct edits at c={c}")
        with peak_rss(gw if c > 1 else None, period_s=0.02) as peak:
            g = edits(gw.url + "/v1/images/edits", through, c, f"edits through the gateway at c={c}")
        note = f"{g['p50'] / d['p50']:.2f} × direct; failed {d['failed']} / {g['failed']}"
        rows.append((f"{name} p50 ms, c={c}", "", d["p50"], g["p50"], note))
    per = (peak[0] - idle) / plan.edit_connections / upload_mb
    note = (
        f"(peak {peak[0]:.0f} − idle {idle:.0f} MB) / {plan.edit_connections} edits in flight / "
        f"{upload_mb:.1f} MB upload; all gateway processes"
    )
    rows.append((f"{name} RSS × upload", "≤ 2 × upload per edit", 0, per, note))
    return rows


def chat_streams(plan: Plan, url: str, body: dict, connections: int, seconds: float, what: str) -> dict:
    """``connections`` chat streams of ``body`` kept going for ``seconds`` (bench/aioload.py)."""
    result = aioload.run(url, json.dumps(body).encode(), connections=connections, seconds=seconds,
                         stream=True, timeout=plan.timeout_s, key=KEY)  # fmt: skip
    return checked(result, what, plan.smoke)


def chat_rows(
    plan: Plan,
    upstream: str,
    gw: Server,
    bare: Server,
    measure: Callable[..., dict],
    images: dict[int, tuple[dict, dict, dict]],
) -> list[Row]:
    """The chat route beside the image route, on the same gateway in the same run: not streamed,
    the added p50 at c=1 and the throughput at c=8 and c=64 as a share of the bare proxy; streamed
    at c=1, the added p50 to the first event and to the end; the memory 100 streams in flight take.
    ``images`` holds the image route's (direct, bare, gateway) figures by connections, where the
    latency rows measured them."""
    rows: list[Row] = []
    direct_chat = {**SMALL_CHAT, "model": "gpt-4o-mini"}
    for c in (1, 8, 64):
        if c not in images:
            images[c] = (
                measure(f"{upstream}/images/generations", {**SMALL, "model": "gpt-image-1"}, c),
                measure(bare.url + IMAGES, SMALL, c),
                measure(gw.url + IMAGES, SMALL, c),
            )
        di, bi, gi = images[c]
        d = measure(f"{upstream}/chat/completions", direct_chat, c)
        b = measure(bare.url + CHAT, SMALL_CHAT, c)
        g = measure(gw.url + CHAT, SMALL_CHAT, c)
        if c == 1:
            note = (
                f"added {g['p50'] - d['p50']:+.2f} ms (bare proxy {b['p50'] - d['p50']:+.2f}); "
                f"image route {gi['p50'] - di['p50']:+.2f} ms"
            )
            rows.append(("chat c=1 p50 ms", "added ≤ the image route's", d["p50"], g["p50"], note))
        else:
            share, image_share = g["rps"] / b["rps"], gi["rps"] / bi["rps"]
            note = f"bare {b['rps']:.0f}: {share:.0%} of bare; image route {image_share:.0%}"
            rows.append((f"chat c={c} req/s", "share ≥ the image route's", d["rps"], g["rps"], note))

    def streams(url: str, model: str, connections: int, content: str) -> dict:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
        return chat_streams(plan, url, body, connections, plan.seconds, "chat streams")

    quick = "Count to three [gap:0.01] [chunks:3]"
    d = streams(f"{upstream}/chat/completions", "gpt-4o-mini", 1, quick)
    g = streams(gw.url + CHAT, "chat-prod", 1, quick)
    rows.append(("chat stream c=1 first event p50 ms", "", d["first_p50"], g["first_p50"],
                 f"added {g['first_p50'] - d['first_p50']:+.2f} ms"))  # fmt: skip
    rows.append(
        ("chat stream c=1 end p50 ms", "", d["p50"], g["p50"], f"added {g['p50'] - d['p50']:+.2f} ms")
    )
    n = plan.memory_streams
    idle = gw.rss_mb()
    with peak_rss(gw) as peak:  # streams of ~6 s: all of them in flight at once for a while
        streams(gw.url + CHAT, "chat-prod", n, f"Count to twenty [gap:{plan.stream_gap_s:g}] [chunks:20]")
    per_100 = (peak[0] - idle) / n * 100
    note = f"peak {peak[0]:.0f} − idle {idle:.0f} MB over {n} streams, all gateway processes"
    rows.append(("chat streams: RSS per 100 in flight MB", "", 0, per_100, note))
    return rows


def stream_rows(plan: Plan, upstream: str, gw: Server) -> list[Row]:
    """``stream_connections`` chat streams kept open for ``stream_seconds``, direct and through the
    gateway: failures, p99 of the whole stream and of the first event."""
    n = plan.stream_connections
    content = f"Count to seven [gap:{plan.stream_gap_s:g}] [chunks:7]"
    body = {
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def streams(url: str, model: str, what: str) -> dict:
        return chat_streams(plan, url, {"model": model, **body}, n, plan.stream_seconds, what)

    d = streams(f"{upstream}/chat/completions", "gpt-4o-mini", "direct streams")
    g = streams(gw.url + "/v1/chat/completions", "chat-prod", "streams through the gateway")
    failures = f"; gateway's: {g['failures']}" if g["failed"] else ""
    note = (
        f"{g['p99'] / d['p99']:.2f} × direct; failed {d['failed']} / {g['failed']}; completed "
        f"{d['completed']} / {g['completed']}; p50 {d['p50']:.0f} / {g['p50']:.0f} ms{failures}"
    )
    first = (
        f"{g['first_p99'] / d['first_p99']:.2f} × direct; p50 {d['first_p50']:.1f} / {g['first_p50']:.1f} ms"
    )
    return [
        (f"{n} streams p99 ms", "none failed; ≤ 1.2 × direct", d["p99"], g["p99"], note),
        (f"{n} streams first event p99 ms", "", d["first_p99"], g["first_p99"], first),
    ]


def during_slow(plan: Plan, fast_url: str, slow_url: str, slow_body: dict) -> tuple[dict, dict]:
    """``fast_connections`` small requests to ``fast_url`` while ``slow_connections`` slow ones
    hold ``slow_url``: the slow load runs in its own process (its own core), the fast one here."""
    command = [
        sys.executable,
        str(ROOT / "bench/aioload.py"),
        slow_url,
        "--body",
        json.dumps(slow_body),
        "--connections",
        str(plan.slow_connections),
        "--seconds",
        f"{plan.slow_seconds:g}",
        "--timeout",
        f"{plan.timeout_s:g}",
        "--key",
        KEY,
    ]
    slow = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(plan.fast_delay_s)
        fast = aioload.run(
            fast_url,
            json.dumps(SMALL).encode(),
            connections=plan.fast_connections,
            seconds=plan.fast_seconds,
            timeout=plan.timeout_s,
            key=KEY,
        )
        out, err = slow.communicate(timeout=plan.slow_seconds + plan.timeout_s + 30)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    if slow.returncode:
        raise RuntimeError(f"the slow load failed:\n{err[-2000:]}")
    return fast, json.loads(out)


def fast_rows(plan: Plan, upstream: str, gw: Server) -> list[Row]:
    """Small requests with no upstream delay while the slow-generation load holds the gateway."""
    n, sleep, c = plan.slow_connections, plan.slow_sleep_s, plan.fast_connections
    slow = {"prompt": f"[sleep:{sleep:g}] a slow generation"}
    route = "/images/generations"
    d, d_slow = during_slow(plan, upstream + route, upstream + route, {**slow, "model": "gpt-image-1"})
    g, g_slow = during_slow(
        plan, gw.url + "/v1" + route, gw.url + "/v1" + route, {**slow, "model": "image-prod"}
    )
    for result, what in ((d, "direct fast"), (d_slow, "direct slow"), (g, "fast"), (g_slow, "slow")):
        checked(result, f"{what} requests", plan.smoke)
    failures = f"; gateway's fast: {g['failures']}" if g["failed"] else ""
    note = (
        f"{g['p99'] / d['p99']:.2f} × direct; failed {d['failed']} / {g['failed']} (of the slow: "
        f"{d_slow['failed']} / {g_slow['failed']}); p50 {d['p50']:.2f} / {g['p50']:.2f} ms; "
        f"{d['rps']:.0f} / {g['rps']:.0f} req/s{failures}"
    )
    return [(f"c={c} fast during {n} × {sleep:g} s p99 ms", "< 50 ms", d["p99"], g["p99"], note)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5)
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
    if only & {"latency", "chat", "breakdown", "redis"}:
        label = f"latency runs (-w {plan.workers} --threads {plan.threads})"
        variants[label] = gunicorn_args(0, plan.workers, plan.threads, extra)
    if only & {"slow", "large"}:
        variants["slow, large, edits, streams, fast (as make serve)"] = gunicorn_args(0, None, None, extra)
    elif only & {"edits", "streams", "fast"}:
        variants["edits, streams, fast (as make serve)"] = gunicorn_args(0, None, None, extra)
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
                # The floor for the slow scenario: the bare proxy (gthread: one thread per call).
                bare_slow = gunicorn("bench.bare_proxy:app", free_port(), plan.slow_workers,
                                     plan.slow_threads, {"BARE_UPSTREAM": upstream}, tmp,
                                     "bare-slow")  # fmt: skip
                servers.append(bare_slow)
                b = measure(bare_slow.url + route, slow, n, plan.slow_seconds)
                slow_row[4] += f"; bare proxy {b['p99'] / d_slow_p99:.2f} × direct"
                stop(bare_slow)
            if bare is not None:
                stop(bare)
            if only & {"edits", "streams", "fast"}:
                # The gateway as `make serve` runs it: gunicorn.conf.py's workers and threads.
                # Large edits need a larger body limit than the default's.
                write_config(tmp / "uploads.yaml", gateway_config(tmp, upstream, body_limit=64 * 2**20))
                gw = start("gateway-default", None, None, {"AISIX_CONFIG": str(tmp / "uploads.yaml")})
                for scenario, rows_of in (
                    ("edits", edit_rows),
                    ("streams", stream_rows),
                    ("fast", fast_rows),
                ):
                    if scenario in only:
                        rows += rows_of(plan, upstream, gw)
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
        *(["bench/aioload.py"] if only - WRK_SCENARIOS else []),
    ]
    tool = "smoke run, built-in load generators" if plan.smoke else " and ".join(tools)
    print(f"\n{when} · gateway gunicorn ({given}): {gateways} · {tool}, {plan.seconds:g} s per run\n")
    print("| scenario | target | direct | gateway | result |\n|---|---|---:|---:|---|")
    for scenario, target, d, g, note in rows:
        print(f"| {scenario} | {target} | {d:.2f} | {g:.2f} | {note} |")
    if args.logs:
        print(f"\nlogs: {args.logs}")


if __name__ == "__main__":
    main()
