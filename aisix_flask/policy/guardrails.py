"""Guardrails: keyword patterns and PII detectors over a request's texts (block, mask or monitor),
and over the answer's text (block or monitor)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import metrics
from ..config.resources import Guardrail
from ..errors import ContentPolicyViolation
from . import pii


@dataclass
class Verdict:
    """What the guardrails made of a request's texts: the texts to send, and what to record."""

    texts: list[str]
    masked: int = 0
    flagged: list[str] = field(default_factory=list)  # monitor-mode guardrails that would have acted


def _detectors(guardrail: Guardrail) -> tuple[pii.Detector, ...]:
    return pii.detectors(guardrail.detectors, guardrail.custom_patterns)


def _matches(guardrail: Guardrail, text: str, folded: str | None = None) -> bool:
    if guardrail.kind == "pii":
        return pii.detect(text, _detectors(guardrail))
    folded = text.casefold() if folded is None else folded
    return any(p.matches(text, folded) for p in guardrail.patterns)


def _blocked(guardrail: Guardrail, what: str, generated: bool = False) -> ContentPolicyViolation:
    metrics.GUARDRAIL_BLOCKS.labels(guardrail.name).inc()
    return ContentPolicyViolation(
        f"The {what} was blocked by the gateway's guardrail '{guardrail.name}'.", generated=generated
    )


def check_input(guardrails: Iterable[Guardrail], texts: list[str], what: str = "prompt") -> Verdict:
    """Run the guardrails in config order over every text; raise 422 naming the first that
    blocks, never echoing what it matched. A masking guardrail's output is what later ones see."""
    verdict = Verdict(list(texts))
    folded: list[str | None] = [None] * len(texts)  # casefolded once per text (again after a mask)
    for guardrail in guardrails:
        for i, text in enumerate(verdict.texts):
            if guardrail.kind != "pii" and folded[i] is None:
                folded[i] = text.casefold()
            if not _matches(guardrail, text, folded[i]):
                continue
            if guardrail.monitor_only:
                verdict.flagged.append(guardrail.name)
                break
            if guardrail.action != "mask":
                raise _blocked(guardrail, what)
            verdict.texts[i], count = pii.mask(text, _detectors(guardrail))
            verdict.masked += count
            folded[i] = None
    return verdict


def check_output(guardrails: Iterable[Guardrail], text: str, flagged: list[str]) -> None:
    """Raise 422 when a guardrail matches the answer's text; a monitor-mode one is added to
    ``flagged`` (once). Text already being relayed cannot be masked: on the answer side, a
    masking guardrail blocks."""
    folded = None
    for guardrail in guardrails:
        if guardrail.kind != "pii" and folded is None:
            folded = text.casefold()
        if _matches(guardrail, text, folded):
            if not guardrail.monitor_only:
                raise _blocked(guardrail, "answer", generated=True)
            if guardrail.name not in flagged:
                flagged.append(guardrail.name)
