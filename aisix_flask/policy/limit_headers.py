"""OpenAI's x-ratelimit-* headers, from the windows a request was admitted (or refused) under."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from limits import RateLimitItem

from .windows import kind as window_kind
from .windows import window_state


def rate_limit_headers(
    windows: Sequence[tuple[Any, str, RateLimitItem]],  # (whose, rule, item), as the limiter plans them
    seen: Sequence[tuple[int, float, int, float]],
    admitted: bool = True,
) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest request window and the tightest token window
    (the one with the least left), from the windows as they were before this request; an
    ``admitted`` request counts in its request windows."""
    tightest: dict[str, tuple[int, int, float]] = {}  # kind -> (remaining, limit, reset)
    for (_, rule, item), window in zip(windows, seen, strict=False):
        kind = window_kind(rule)
        state = window_state(window, item.get_expiry(), item.amount, admitted and kind == "requests")
        if kind not in tightest or state[0] < tightest[kind][0]:
            tightest[kind] = state
    headers: dict[str, str] = {}
    for kind, (remaining, limit, reset) in tightest.items():
        headers.update(headers_for(kind, limit, remaining, reset))
    return headers


def headers_for(kind: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(remaining),
        f"x-ratelimit-reset-{kind}": duration(reset),
    }


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1.5s``, ``6m0s``."""
    millis = round(max(seconds, 0.0) * 1000)
    if millis < 1000:
        return f"{millis}ms"
    if millis < 59_950:
        return f"{millis / 1000:.3g}s"
    hours, rest = divmod(round(millis / 1000), 3600)
    return (f"{hours}h" if hours else "") + f"{rest // 60}m{rest % 60}s"
