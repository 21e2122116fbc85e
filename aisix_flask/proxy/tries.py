"""What one failed attempt allows next: the table of README "Routing and failover", in one place
for every route, so that no way of sending forgets a row of it.

Never anything that may have generated, and billed: a read timeout, a connection lost after the
request was written, a 2xx that cannot be read and any stream that began end the request where
they happened. Only a request that never reached the upstream is sent again to the same target.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.resources import Routing
from ..errors import UpstreamAuthFailed
from .send import Attempt

MAX_RETRY_AFTER_S = 300.0  # an upstream's Retry-After cools its target at most this long
SERVER_ERRORS = frozenset({500, 502, 503, 504, 529})


@dataclass(frozen=True)
class Next:
    """What may follow an attempt."""

    same_target: bool = False  # nothing was sent: the same target again (``retries``)
    next_target: bool = False  # another target may answer instead
    cool_s: float | None = None  # the target is skipped this long (None: not at all)

    @property
    def final(self) -> bool:
        """This attempt's outcome is the request's answer."""
        return not (self.same_target or self.next_target)


FINAL = Next()


def after(attempt: Attempt, routing: Routing | None, cooldown_s: float) -> Next:
    """What may follow ``attempt`` under ``routing`` (None: a direct model; it has one target,
    which the caller does not cool)."""
    if attempt.error is None and (attempt.answer is None or attempt.answer.status < 400):
        return FINAL  # answered (a stream: its events began)
    if attempt.sent_nothing:
        return Next(same_target=True, next_target=True, cool_s=cooldown_s)
    if attempt.status is None:
        # Sent, then lost or timed out: the provider may have generated. Nothing moves on.
        return Next(cool_s=cooldown_s)
    if attempt.outcome_unknown:
        return FINAL  # a 2xx the gateway cannot read: the work was done
    return _by_status(attempt, attempt.status, routing, cooldown_s)


def _by_status(attempt: Attempt, status: int, routing: Routing | None, cooldown_s: float) -> Next:
    moves = not attempt.upstream_says_no_retry
    cool = _retry_after_s(attempt.retry_after) or cooldown_s  # the upstream's Retry-After wins
    if status == 429:
        return Next(next_target=moves and (routing is None or routing.retry_on_429), cool_s=cool)
    if status in SERVER_ERRORS or isinstance(attempt.error, UpstreamAuthFailed):
        return Next(next_target=moves, cool_s=cool)
    if routing is not None and status in routing.fallback_on_statuses:
        return Next(next_target=moves)
    return FINAL  # the caller's own request (400, 404, 413, 422...): passed through


def _retry_after_s(value: str | None) -> float | None:
    """An upstream's Retry-After in seconds (a number; an HTTP date is not worth parsing here)."""
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return None
    return min(seconds, MAX_RETRY_AFTER_S) if seconds > 0 else None
