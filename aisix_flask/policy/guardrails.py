"""Input guardrails over the prompt: keyword patterns and PII detectors; block, mask or monitor."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import metrics
from ..config.resources import Guardrail
from ..errors import ContentPolicyViolation
from . import pii


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
    folded = None  # the casefolded prompt for keyword literals, made once (again after a mask)
    for guardrail in guardrails:
        if guardrail.kind == "pii":
            matched = pii.detect(verdict.prompt, guardrail.detectors)
        else:
            folded = folded or verdict.prompt.casefold()
            matched = any(p.matches(verdict.prompt, folded) for p in guardrail.patterns)
        if not matched:
            continue
        if guardrail.monitor_only:
            verdict.flagged.append(guardrail.name)
        elif guardrail.action == "mask":
            verdict.prompt, count = pii.mask(verdict.prompt, guardrail.detectors)
            verdict.masked += count
            folded = None
        else:
            metrics.GUARDRAIL_BLOCKS.labels(guardrail.name).inc()
            raise ContentPolicyViolation(
                f"The prompt was blocked by the gateway's guardrail '{guardrail.name}'."
            )
    return verdict
