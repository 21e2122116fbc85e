"""PII detectors: what each one finds in prompt text, and the token that masks it.

A ``pii`` guardrail names its detectors in the config; they are compiled here, once per set.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Detector:
    """A named pattern, optionally confirmed by a check of what it matched."""

    name: str
    regex: re.Pattern[str] = field(repr=False)
    confirm: Callable[[str], bool] | None = field(default=None, repr=False)

    @property
    def token(self) -> str:
        """What a masked match becomes, e.g. ``[EMAIL_REDACTED]``."""
        return f"[{re.sub(r'[^A-Za-z0-9]+', '_', self.name).upper()}_REDACTED]"

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where this detector finds something in ``text``."""
        return [
            m.span() for m in self.regex.finditer(text) if self.confirm is None or self.confirm(m.group())
        ]


def _luhn(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _phone_digits(candidate: str) -> bool:
    return 8 <= sum(c.isdigit() for c in candidate) <= 15


def _ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return candidate.count(":") >= 2 and sum(c.isalnum() for c in candidate) >= 2


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

_BUILTIN = (
    Detector(
        "email",
        re.compile(
            r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
        ),
    ),
    # International numbers need their "+"; national ones need separators, so that plain
    # numbers (amounts, order ids, years) are not taken for phone numbers.
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}(?![\w-])"
            r"|(?<![\w(-])(?:\(\d{3}\)[ ]?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w-])"
        ),
        _phone_digits,
    ),
    # 13-19 digits (spaces or dashes between) with a card network's prefix and a valid Luhn sum.
    Detector(
        "credit_card",
        re.compile(r"(?<![\d-])(?:4|5[1-5]|2[2-7]|3[0478]|6)(?:[ -]?\d){11,18}(?![\d-])"),
        _luhn,
    ),
    Detector("us_ssn", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")),
    Detector("ip_address", re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w.]*\d)")),
    Detector(
        "ip_address", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), _ipv6
    ),
    Detector(
        "api_key",
        re.compile(
            r"(?<![\w-])(?:"
            r"sk-(?:proj-|ant-(?:api\d\d-)?|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
            r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
            r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
            r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
            r"|AIza[0-9A-Za-z_-]{35}"  # Google
            r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
            r"|[sr]k_live_[A-Za-z0-9]{24,}"  # Stripe
            r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
            r")(?![\w-])"
            r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
        ),
    ),
)
# A name in a guardrail's ``detectors`` list → its detectors (ip_address is v4 and v6).
DETECTORS: dict[str, tuple[Detector, ...]] = {}
for _detector in _BUILTIN:
    DETECTORS[_detector.name] = (*DETECTORS.get(_detector.name, ()), _detector)
NAMES = tuple(DETECTORS)  # what the config's PII_DETECTORS lists (tests/test_pii.py checks)


def builtin(names: tuple[str, ...] | list[str]) -> tuple[Detector, ...]:
    """The detectors named in a guardrail's ``detectors`` list."""
    return tuple(d for name in names for d in DETECTORS[name])


def custom(name: str, pattern: str) -> Detector:
    """A detector from a guardrail's ``custom_patterns``."""
    return Detector(name, re.compile(pattern))


@functools.lru_cache(maxsize=256)
def detectors(names: tuple[str, ...], custom_patterns: tuple[tuple[str, str], ...]) -> tuple[Detector, ...]:
    """A pii guardrail's detectors: the built-in ones it names, then its own (name, regex) ones."""
    return builtin(names) + tuple(custom(name, pattern) for name, pattern in custom_patterns)


def mask(text: str, detectors: tuple[Detector, ...]) -> tuple[str, int]:
    """Replace every match with its detector's token; overlapping matches count once."""
    found = sorted((start, -end, d.token) for d in detectors for start, end in d.spans(text))
    out, position, count = [], 0, 0
    for start, negative_end, token in found:
        if start < position:
            continue
        out.append(text[position:start])
        out.append(token)
        position, count = -negative_end, count + 1
    out.append(text[position:])
    return "".join(out), count


def detect(text: str, detectors: tuple[Detector, ...]) -> bool:
    """Whether any detector finds anything."""
    return any(d.spans(text) for d in detectors)
