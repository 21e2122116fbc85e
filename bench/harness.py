"""The bench's plumbing: servers on loopback ports (gunicorn, the fake upstream) and the load
generators that drive them (wrk, and a small threads + requests one for smoke runs)."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-caller-key"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_TICKS = os.sysconf("SC_CLK_TCK")
LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


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

    def pids(self) -> list[int]:
        """The process and its children (gunicorn's workers)."""
        pid = self.process.pid
        try:  # without a pgrep process per sample, where the kernel lists children
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [pid, *map(int, children.split())]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the process and its children have used so far, threads
        included (the ledger's writer): take it before and after a run."""
        total = 0
        for pid in self.pids():
            try:  # fields 14 and 15 (utime, stime), counted after the command's closing parenthesis
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / _TICKS

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (gunicorn's workers), in MB."""
        total = 0
        for pid in self.pids():
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


def in_turn(
    first: Callable[[], float], second: Callable[[], float], runs: int = 3
) -> tuple[float, float, str]:
    """Measure ``first`` and ``second`` in turn, ``runs`` times each (the machine's drift weighs
    on both alike): each one's median, and every run's pair as text."""
    pairs = [(first(), second()) for _ in range(runs)]
    text = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs)
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs), text
