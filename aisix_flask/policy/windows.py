"""Sliding-window counters as the limiter reads them: which rules count requests and which tokens,
how long until a window has room again, and what it has left."""

from __future__ import annotations

from limits import RateLimitItemPerDay, RateLimitItemPerMinute

from ..stores.windows import weighted_count

REQUEST_RULES = {"rpm": RateLimitItemPerMinute, "rpd": RateLimitItemPerDay}
TOKEN_RULES = {"tpm": RateLimitItemPerMinute, "tpd": RateLimitItemPerDay}


def kind(rule: str) -> str:
    """What a rule counts: ``requests`` (rpm, rpd) or ``tokens`` (tpm, tpd)."""
    return "requests" if rule in REQUEST_RULES else "tokens"


def seconds_until_free(
    window: tuple[int, float, int, float], expiry: int, limit: int, cost: int = 1
) -> float:
    """How long until ``cost`` more fits, for a sliding-window-counter ``window``.

    ``window`` is what ``get_sliding_window`` returns: (previous count, previous TTL,
    current count, current TTL). The previous window weighs ``previous TTL / expiry``;
    when the current window ends it becomes the previous one with full weight.
    """
    previous, previous_ttl, current, current_ttl = window
    room = limit - cost
    if room < 0:
        return float(expiry)
    if weighted_count(window, expiry) <= room:
        return 0.0
    # The conditions below are strict (count < room + 1): a moment past the boundary fits.
    end = current_ttl - expiry if current_ttl > expiry else previous_ttl
    if current <= room:
        t = previous_ttl - (room - current + 1) * expiry / previous
        if t <= end:
            return max(t, 0.0) + _MOMENT
    if current == 0:
        return max(end, 0.0) + _MOMENT
    return max(end, end + expiry - (room + 1) * expiry / current) + _MOMENT


_MOMENT = 0.001


def window_state(
    window: tuple[int, float, int, float], expiry: int, limit: int, counted: bool
) -> tuple[int, int, float]:
    """(remaining, limit, seconds until the window is back to its full allowance)."""
    previous, previous_ttl, current, current_ttl = window
    used = weighted_count(window, expiry) + (1 if counted else 0)
    if current or counted:
        # What the current window holds decays out when it has ended and a whole window more has
        # passed; a window this request starts (none stored yet) is that long from now.
        reset = current_ttl if current_ttl > 0 else 2.0 * expiry
    else:
        reset = previous_ttl if previous else 0.0
    return max(limit - used, 0), limit, reset
