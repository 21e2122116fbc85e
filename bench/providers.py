"""The ``providers`` scenario: what the anthropic adapter's translation costs beside an OpenAI
model, on the same fake upstream (bench/fake_upstream.py answers both APIs).

- c=1 chat, not streamed: ``chat-prod`` (OpenAI's API as it is) and ``claude`` (translated both
  ways) measured in turn, three times each; the added p50 is the median against the median.
- c=1 chat streams of 20 events 10 ms apart (bench/aioload.py), in turn: the added time to the end
  of the stream, per event, is what the translation adds to each event's relay.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from bench import aioload
from bench.config import gateway_config, write_config
from bench.harness import KEY, Server, in_turn
from bench.scenarios import CHAT, SMALL_CHAT, Plan, Row, checked

STREAM_EVENTS, STREAM_GAP_S = 20, 0.01


def providers_config(tmp: Path, upstream: str) -> str:
    """The bench's config with an Anthropic key and a Claude model on the same fake."""
    key = "anthropic, provider: anthropic, api_key: sk-bench"
    model = "claude, provider: anthropic, model_name: claude-bench, provider_key: anthropic"
    price = "pricing: {per_million_tokens: {input: 3, output: 15}}"
    text = gateway_config(tmp, upstream)
    text = text.replace(
        "models:\n", f'  - {{display_name: {key}, api_base: "{upstream.removesuffix("/v1")}"}}\nmodels:\n'
    )
    return text.replace("api_keys:\n", f"  - {{display_name: {model}, {price}}}\napi_keys:\n")


def provider_rows(
    plan: Plan,
    tmp: Path,
    upstream: str,
    start: Callable[[str, int | None, int | None, dict[str, str]], Server],
    stop: Callable[[Server], None],
    measure: Callable[..., dict],
) -> list[Row]:
    """The rows (``start``/``stop``/``measure`` as bench/run.py's)."""
    write_config(tmp / "providers.yaml", providers_config(tmp, upstream))
    gw = start("gateway-providers", plan.workers, plan.threads, {"AISIX_CONFIG": str(tmp / "providers.yaml")})
    try:
        return [_whole_row(gw, measure), _stream_row(plan, gw)]
    finally:
        stop(gw)


def _whole_row(gw: Server, measure: Callable[..., dict]) -> Row:
    o, c, runs = in_turn(
        lambda: measure(gw.url + CHAT, SMALL_CHAT, 1)["p50"],
        lambda: measure(gw.url + CHAT, {**SMALL_CHAT, "model": "claude"}, 1)["p50"],
    )
    return (
        "chat c=1 p50 ms, anthropic adapter (OpenAI's API on the same fake in the direct column)",
        "added ≤ 0.2 ms",
        o,
        c,
        f"added {c - o:+.3f} ms (median of 3 runs each, in turn: {runs})",
    )


def _stream_row(plan: Plan, gw: Server) -> Row:
    text = f"Count [chunks:{STREAM_EVENTS}] [gap:{STREAM_GAP_S}]"
    ends: dict[str, list[float]] = {"chat-prod": [], "claude": []}
    for _ in range(3):
        for model, found in ends.items():
            body = json.dumps(
                {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
            )
            result = aioload.run(
                gw.url + CHAT, body.encode(), connections=1, seconds=plan.seconds, stream=True,
                timeout=plan.timeout_s, key=KEY,
            )  # fmt: skip
            found.append(checked(result, f"{model} streams", plan.smoke)["p50"])
    o, c = statistics.median(ends["chat-prod"]), statistics.median(ends["claude"])
    return (
        f"chat stream c=1 end p50 ms, {STREAM_EVENTS} events, anthropic adapter (OpenAI's API in the direct "
        "column)",
        "≤ 1 ms added per event",
        o,
        c,
        f"added {(c - o) / STREAM_EVENTS:+.3f} ms per event ({c - o:+.2f} ms per stream; median of 3 runs "
        "each)",
    )
