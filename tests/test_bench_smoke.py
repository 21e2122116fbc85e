"""The benchmark scripts still run: each end to end in its ``--smoke`` mode, printing its table.

Nothing else runs them, and they reach into the gateway (its config format, its route's functions,
the real gunicorn), so a change there that breaks them shows up here rather than on the next
benchmark day. Their figures are not checked: a smoke run is far too short to mean anything.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.aioload import Events, load
from bench.config import BREAKDOWN
from bench.harness import gunicorn_args, parse_wrk, probe_gunicorn, pyload, redis_answers

REPO = Path(__file__).resolve().parent.parent

# What ``wrk --latency`` prints (the layout of wrk's print_stats and print_stats_latency); real runs
# parse it, and wrk is not installed everywhere the suite runs.
WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8092/v1/images/generations
  4 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    40.12ms   10.34ms 120.50ms   70.00%
    Req/Sec   400.12     50.00   500.00     75.00%
  Latency Distribution
     50%  812.00us
     75%   45.00ms
     90%   60.00ms
     99%    1.20s\x20
  8000 requests in 5.00s, 2.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1600.00
Transfer/sec:    400.00KB
"""


def smoke(script: str, *options: str) -> str:
    """Run ``bench/<script> --smoke [options]`` from the checkout; its standard output."""
    done = subprocess.run(
        # gthread: it starts and stops faster than gevent, and a smoke run is about the script.
        [sys.executable, f"bench/{script}", "--smoke", *options]
        + (["--gunicorn-args=-k aisix_flask.workers.threads.ThreadWorker"] if script == "run.py" else []),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, (
        f"bench/{script} --smoke failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def table(output: str) -> dict[str, list[str]]:
    """The Markdown table's rows by their first cell, the header and the rule left out."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("scenario", "step"):
            rows[cells[0]] = cells[1:]
    return rows


def test_run_py_smoke_prints_every_row():
    output = smoke("run.py")
    assert "smoke run, built-in load generator" in output
    # The heading says what each gateway ran on, the default config's included.
    assert re.search(r"fast, open, cpu \(as make serve\): \S+ \d+ × \d+ (threads|connections)", output)
    rows = table(output)
    expected = [
        "c=1 p50 ms",
        "c=1 p99 ms",
        "c=8 req/s",
        "c=64 req/s",
        "chat c=1 p50 ms",
        "chat c=8 req/s",
        "chat c=64 req/s",
        "chat stream c=1 first event p50 ms",
        "chat stream c=1 end p50 ms",
        "chat streams: RSS per 100 in flight MB",
        "c=64 req/s, limits: rpm + tpm + concurrency",
        "c=64 req/s, limits: rpm + tpm (no concurrency slots)",
        "c=64 req/s, no rate limits",
        "c=64 req/s, no rate limits, no access log",
        *(["c=64 req/s, limits: all three, on Redis"] if redis_answers() else []),
        "c=1 p50 ms, routing model (direct model in the direct column)",
        "c=64 req/s, one of two targets killed (both healthy in the direct column)",
        "chat c=1 p50 ms, anthropic adapter (OpenAI's API on the same fake in the direct column)",
        "chat stream c=1 end p50 ms, 20 events, anthropic adapter (OpenAI's API in the direct column)",
        "8 × 0.1 s p99 ms",
        "8 × 0.1 s RSS MB",
        "1 MB p50 ms",
        "edit 2 × 0.25 MB p50 ms, c=1",
        "edit 2 × 0.25 MB p50 ms, c=2",
        "edit 2 × 0.25 MB RSS × upload",
        "20 streams p99 ms",
        "20 streams p99 after the opening ms",
        "20 streams first event p99 ms",
        "open streams 20/s × 0.3 s p50 ms",
        "open streams 20/s × 0.3 s p99 ms",
        "open 5 s generations 20/s × 0.3 s p50 ms",
        "open 5 s generations 20/s × 0.3 s p99 ms",
        "CPU ms per call, small call",
        "CPU ms per call, 5 s generations",
        "CPU ms per call, streams",
        *(f"CPU ms per {what}, {label}" for label, _, _ in BREAKDOWN for what in ("small call", "stream")),
        "c=2 fast during 8 × 0.1 s p99 ms",
    ]
    assert list(rows) == expected
    for name, (_target, direct, gateway, _result) in rows.items():
        float(gateway)
        # The memory growth of a smoke run's two small edits, or ten short streams, may be within
        # the sampling's noise; a smoke run's CPU, within a clock tick.
        if name.startswith("CPU"):
            continue
        assert name.endswith("RSS × upload") or "RSS per" in name or float(gateway) > 0, name
        assert "RSS" in name or float(direct) > 0, name
    # The slow row gets the bare proxy's figure last, from its own gunicorn.
    assert "failed 0 / 0; throughput" in rows["8 × 0.1 s p99 ms"][3]
    assert "(bare proxy " in rows["20 streams p99 ms"][3]
    assert "failed 0 / 0; completed" in rows["20 streams p99 ms"][3]
    assert "image route" in rows["chat c=1 p50 ms"][3] and "image route" in rows["chat c=8 req/s"][3]
    assert "failed 0 / 0 (of the slow: 0 / 0)" in rows["c=2 fast during 8 × 0.1 s p99 ms"][3]
    assert "failed 0 / 0 / 0 (direct / bare / gateway)" in rows["open streams 20/s × 0.3 s p99 ms"][3]
    assert "× the bare proxy's" in rows["CPU ms per call, streams"][3]


def test_profile_py_smoke_times_every_step():
    rows = table(smoke("profile.py"))
    steps = [
        "auth (caller key)",
        "body read + JSON",
        "validation (marshmallow)",
        "alias lookup",
        "guardrails",
        "rate limits: admit",
        "rate limits: finish (tokens, slots back)",
        "upstream call (incl. the fake's time)",
        "answer",
        "spend: count the cost (every period)",
        "ledger: queue the row",
        "metrics",
        "ledger: insert (writer thread)",
    ]
    assert set(rows) == {
        *steps,
        "Flask, hooks (request id, access log), test client",
        "**total on the request thread**",
    }
    assert int(rows["**total on the request thread**"][0].strip("*")) > 0


def test_profile_py_smoke_times_the_stream_path():
    output = smoke("profile.py", "--stream")
    assert "chat streams in-process" in output
    rows = table(output)
    assert "answer" not in rows
    for step in (
        "stream: the answer's head",
        "stream: read the upstream's bytes (incl. the fake's time)",
        "stream: each event read (JSON, usage, guardrails)",
        "rate limits: finish (tokens, slots back)",
        "ledger: queue the row",
    ):
        assert step in rows, step


def test_wrk_report_is_read_in_milliseconds():
    assert parse_wrk(WRK_OUTPUT) == {"rps": 1600.0, "p50": 0.812, "p99": 1200.0, "failed": 7}


def test_built_in_load_generators_send_to_loopback_only():
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        pyload("http://localhost:1/v1/images/generations", {}, connections=1, seconds=0.1)
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        asyncio.run(load("http://localhost:1/v1/chat/completions", b"{}", connections=1, seconds=0.1))


def events(*pieces: bytes) -> Events:
    """What the stream generator made of a body that arrived in these pieces."""
    seen = Events()
    for i, piece in enumerate(pieces):
        seen.feed(piece, now=float(i))
    return seen


def test_a_stream_is_complete_only_with_done_and_no_error_event():
    clean = events(b": keep-alive\n\n", b'data: {"choices": []}\n', b"\ndata: [DO", b"NE]\n\n")
    assert (clean.verdict(), clean.first_at) == ("", 2.0)  # when the first data event was whole
    assert events(b'data: {"choices": []}\n\n').verdict() == "no data: [DONE]"
    cut = events(b'data: {"choices": []}\n\ndata: {"error": {"code": "upstream_timeout"}}\n\n')
    assert cut.verdict().startswith('error event {"error"')
    assert events(b"data: [DONE]").verdict() == "no data: [DONE]"  # an event ends with a blank line


def test_the_heading_names_what_gunicorn_makes_of_extra_arguments():
    found = probe_gunicorn(
        {
            "default": gunicorn_args(0, None, None),
            "threads": gunicorn_args(
                0, 2, 16, ["-k", "aisix_flask.workers.threads.ThreadWorker", "--threads", "512"]
            ),
            "gevent": gunicorn_args(0, None, None, ["-k", "gevent", "--worker-connections", "2000"]),
        }
    )()
    assert re.fullmatch(r"\S+ \d+ × \d+ (threads|connections)", found["default"])
    assert found["threads"].endswith(" 2 × 512 threads")  # the last option wins, as on the command line
    assert re.fullmatch(r"gevent \d+ × 2000 connections", found["gevent"])
