"""Input guardrails over the prompt: keyword patterns and PII detectors; block, mask or monitor."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import pii
from .errors import ContentPolicyViolation
from .resources import Guardrail


@dataclass
class Verdict:
    """What the guardrails made of a prompt: the text to send, and what to record."""

    prompt: str
    masked: int = 0
    flagged: list[str] = field(default_factory=list)  # monitor-mode guardrails that would have acted


def check_input(guardrails: Iterable[Guardrail], prompt: str) -> Verdict:
    """Run the guardrails in config order; raise 422 naming the first that blocks, never echoing
    what it matched. A masking guardrail's output is what later guardrails see."""
    verdict = Verdict(prompt)
    for guardrail in guardrails:
        if not _matches(guardrail, verdict.prompt):
            continue
        if guardrail.monitor_only:
            verdict.flagged.append(guardrail.name)
        elif guardrail.action == "mask":
            verdict.prompt, count = pii.mask(verdict.prompt, guardrail.detectors)
            verdict.masked += count
        else:
            raise ContentPolicyViolation(
                f"The prompt was blocked by the gateway's guardrail '{guardrail.name}'."
            )
    return verdict


def _matches(guardrail: Guardrail, text: str) -> bool:
    if guardrail.kind == "pii":
        return pii.detect(text, guardrail.detectors)
    folded = text.casefold()
    return any(p.matches(text, folded) for p in guardrail.patterns)
