"""The scenarios that need more than one load run per row: their sizes (``Plan``) and the rows
they print (image edits, chat beside images, a thousand streams, fast calls beside slow ones)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import aioload
from bench.harness import KEY, ROOT, Server, peak_rss


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
    # The open-loop scenario (bench/open_rows.py):
    open_stream_rate: float = 450.0  # chat streams per second
    open_generation_rate: float = 200.0  # 5 s image generations per second
    open_seconds: float = 30.0  # how long each arrives
    open_warm_up_s: float = 3.0  # the same load first, not measured
    open_small_rate: float = 400.0  # small calls per second, for their CPU figure
    cpu_stream_rate: float = 300.0  # chat streams per second, for the cpu scenario's figure
    cpu_seconds: float = 5.0  # per small-call CPU run
    cpu_runs: int = 3  # small-call CPU runs, in turn
    smoke: bool = False


def plan_for(args: argparse.Namespace) -> Plan:
    """The real run's sizes from the command line, or the smoke run's fixed tiny ones."""
    if args.smoke:
        # No wait after a config edit: the smoke run's figures mean nothing, write_config has
        # checked that the gateway accepts the file, and live reloading has tests of its own.
        return Plan(seconds=0.1, workers=2, threads=4, reload_wait_s=0, slow_connections=8,
                    slow_sleep_s=0.1, slow_seconds=0.2, sizes_mb=(1,),
                    edit_images=2, edit_image_bytes=256 * 1024, edit_connections=2,
                    stream_connections=20, memory_streams=10, stream_seconds=0.3, stream_gap_s=0.005,
                    fast_connections=2, fast_delay_s=0.1, fast_seconds=0.1, timeout_s=10,
                    open_stream_rate=20, open_generation_rate=20, open_seconds=0.3, open_small_rate=20,
                    cpu_stream_rate=20, open_warm_up_s=0.1, cpu_seconds=0.2, cpu_runs=1,
                    smoke=True)  # fmt: skip
    return Plan(seconds=args.seconds, workers=args.workers, threads=args.threads, reload_wait_s=2.5,
                slow_connections=1000, slow_sleep_s=5, slow_seconds=12,
                sizes_mb=(8, 32), edit_images=4, edit_image_bytes=4 * 1024 * 1024, edit_connections=4,
                stream_connections=1000, memory_streams=100, stream_seconds=12, stream_gap_s=0.3,
                fast_connections=8, fast_delay_s=2, fast_seconds=9, timeout_s=60,
                open_seconds=args.open_seconds)  # fmt: skip


Row = tuple[str, str, float, float, str]

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


def stream_rows(plan: Plan, upstream: str, gw: Server, bare: Server) -> list[Row]:
    """``stream_connections`` chat streams kept open for ``stream_seconds``, direct, through the
    bare proxy (the floor: Flask + requests relaying, nothing checked, on the same workers) and
    through the gateway: failures, p99 of the whole stream (with and without the opening burst)
    and of the first event."""
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
    b = streams(bare.url + CHAT, "gpt-4o-mini", "streams through the bare proxy")
    g = streams(gw.url + CHAT, "chat-prod", "streams through the gateway")

    def against_direct(figure: str) -> str:
        return f"{g[figure] / d[figure]:.2f} × direct (bare proxy {b[figure] / d[figure]:.2f} ×)"

    failures = f"; gateway's: {g['failures']}" if g["failed"] else ""
    note = (
        f"{against_direct('p99')}; failed {d['failed']} / {g['failed']}; completed "
        f"{d['completed']} / {g['completed']}; p50 {d['p50']:.0f} / {g['p50']:.0f} ms{failures}"
    )
    steady = f"{against_direct('p99_after_opening')}: each connection's first stream left out"
    first = f"{against_direct('first_p99')}; p50 {d['first_p50']:.1f} / {g['first_p50']:.1f} ms"
    return [
        (f"{n} streams p99 ms", "none failed; ≤ 1.2 × direct", d["p99"], g["p99"], note),
        (f"{n} streams p99 after the opening ms", "", d["p99_after_opening"], g["p99_after_opening"], steady),
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
