"""Input guardrails: keyword (literal and regex) checks over the prompt text."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ContentPolicyViolation
from .resources import Guardrail


def check_input(guardrails: Iterable[Guardrail], text: str) -> None:
    """Raise 422 naming the first guardrail that matches ``text``; never echo what matched."""
    folded = None
    for guardrail in guardrails:
        if folded is None:
            folded = text.casefold()
        if any(p.matches(text, folded) for p in guardrail.patterns):
            raise ContentPolicyViolation(
                f"The prompt was blocked by the gateway's guardrail '{guardrail.name}'."
            )
