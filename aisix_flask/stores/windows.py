"""The sliding-window counter's arithmetic, as the stores and the limiter both read it."""

from __future__ import annotations

import math

# A sliding-window counter as ``limits``' ``get_sliding_window`` gives it: (previous count,
# previous TTL, current count, current TTL).
Window = tuple[int, float, int, float]


def weighted_count(window: Window, expiry: int) -> int:
    """A sliding-window counter's count now: the previous window in proportion to how much of it
    still overlaps, plus the current one (``window`` as ``get_sliding_window`` returns it)."""
    previous, previous_ttl, current, _ = window
    return math.floor(previous * previous_ttl / expiry) + current


def sliding_window(counts: dict[tuple[str, int], int], key: str, expiry: int, now: float) -> Window:
    """``key``'s window as ``get_sliding_window`` returns it, from its (key, window) counts.

    Windows are aligned to multiples of ``expiry``, as in limits' MemoryStorage.
    """
    current = int(now // expiry)
    previous_count, current_count = counts.get((key, current - 1), 0), counts.get((key, current), 0)
    to_end = (current + 1) * expiry - now
    return previous_count, (to_end if previous_count else 0.0), current_count, to_end + expiry
