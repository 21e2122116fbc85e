"""The sliding-window counter's arithmetic, as the stores and the limiter both read it."""

from __future__ import annotations

import math


def weighted_count(window: tuple[int, float, int, float], expiry: int) -> int:
    """A sliding-window counter's count now: the previous window in proportion to how much of it
    still overlaps, plus the current one (``window`` as ``get_sliding_window`` returns it)."""
    previous, previous_ttl, current, _ = window
    return math.floor(previous * previous_ttl / expiry) + current
