"""A cost in USD as people read it (the report, the usage page): never a zero for a cost that is not."""

from __future__ import annotations

import math


def format_usd(value: float, places: int = 4) -> str:
    """``value`` with ``places`` decimals, or with as many as it takes to show two significant
    digits: a small cost (a few embedding tokens: 0.000042) must not read as 0.0000."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.{places}f}"
    decimals = max(places, 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if decimals == places:
        return text
    # The extra decimals are there for the significant digits; zeros after them say nothing.
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(places, '0')}"
