"""Open-loop load: requests arrive as a Poisson process at a fixed rate for a fixed time, as a
population of independent users would send them, whatever the server's pace.

A closed-loop generator (wrk, bench/aioload.py's ``load``) sends a connection's next request only
once the last is answered, so a server that stalls is sent less and its stall is counted once
("coordinated omission"). Here each request has a scheduled send time, drawn in advance
(exponential gaps, mean 1/rate); its latency is counted from that time, so time spent queued
anywhere (in the generator included) is time the caller waited. Connections are kept alive and
reused by the next arrival when idle; an arrival with none idle opens one, as a pool does. A
connection idle for ``KEEPALIVE_EXPIRY_S`` is closed rather than reused, as httpx's pool does: the
servers close theirs after 5 s (gunicorn.conf.py's ``keepalive``), and a request sent on one the
server is closing that moment is reset, a failure of the client's pool, not the server's.

Every run sends only to 127.0.0.1 and stops by itself: the schedule ends after ``seconds``, and a
request not answered within ``timeout`` fails.

    .venv/bin/python bench/openloop.py URL --body '{"model": "chat-prod", ...}' --rate 450 \\
        --seconds 30 [--stream] [--key KEY]

prints the figures as one JSON object: those of bench/aioload.py, plus ``lag_p99`` (ms between a
request's scheduled and actual send: the generator's own delay, part of every latency).
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.aioload import (  # noqa: E402
    Client,
    Outcome,
    attempt,
    command_line,
    figures,
    percentile,
    request_head,
    wait_for,
)

_GRACE_S = 5.0
KEEPALIVE_EXPIRY_S = 4.0


def arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of a Poisson process at ``rate`` per second."""
    rng, at, times = random.Random(seed), 0.0, []
    while (at := at + rng.expovariate(rate)) < seconds:
        times.append(at)
    return times


async def open_load(
    url: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    content_type: str = "application/json",
    stream: bool = False,
    timeout: float = 60.0,
    key: str | None = None,
    seed: int = 23,
) -> dict[str, Any]:
    """Send ``body`` to ``url`` at ``rate`` per second (Poisson) for ``seconds``; the figures (ms).
    The same ``seed`` gives the same schedule, so two targets are sent the same arrivals."""
    parts = urlsplit(url)
    head = request_head(url, len(body), content_type, stream, key)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    idle: list[tuple[float, Client]] = []  # (idle since, connection), the last used last
    outcomes: list[Outcome] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    def connection() -> Client:
        while idle:
            since, client = idle.pop()
            if time.perf_counter() - since < KEEPALIVE_EXPIRY_S:
                return client
            client.close()
        return Client(host, port, head, body, stream)

    async def send(scheduled: float) -> None:
        client = connection()
        began = time.perf_counter()
        lags.append(began - scheduled)
        outcome = await attempt(client, timeout)
        ended = time.perf_counter()
        outcome.seconds = ended - scheduled
        if outcome.first_event_s is not None:
            outcome.first_event_s += began - scheduled
        outcome.at = scheduled - started
        outcomes.append(outcome)
        if client.writer is not None:
            idle.append((ended, client))

    started = time.perf_counter()
    for at in arrivals(rate, seconds, seed):
        scheduled = started + at
        if (wait := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(send(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    running = await wait_for(tasks, timeout + _GRACE_S)
    for _, client in idle:
        client.close()
    result = figures(outcomes, running, time.perf_counter() - started)
    result["lag_p99"] = percentile(sorted(lag * 1000 for lag in lags), 99)
    result["p99_by_step"] = _by_step([o for o in outcomes if not o.failure], seconds)
    return result


def _by_step(good: list[Outcome], seconds: float, steps: int = 6) -> list[float]:
    """The p99 (ms) of the requests scheduled in each sixth of the run: is the tail a moment (the
    start, a stall) or the whole run?"""
    step = seconds / steps
    buckets: list[list[float]] = [[] for _ in range(steps)]
    for outcome in good:
        buckets[min(steps - 1, int(outcome.at / step))].append(outcome.seconds * 1000)
    return [round(percentile(sorted(bucket), 99)) if bucket else math.nan for bucket in buckets]


def run(url: str, body: bytes, **options: Any) -> dict[str, Any]:
    """``open_load`` from synchronous code: a fresh event loop for the run."""
    return asyncio.run(open_load(url, body, **options))


def main() -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--rate", type=float, required=True, help="requests per second (mean)")
        parser.add_argument("--seconds", type=float, default=10, help="how long requests are sent")
        parser.add_argument("--seed", type=int, default=23, help="the schedule's random seed")

    command_line(__doc__, run, options)


if __name__ == "__main__":
    main()
