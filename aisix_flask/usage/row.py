"""The usage row: what one request records, filled in step by step as the route runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..jsonvalues import whole_number

_TEXT_LIMIT = 256


def _short(value: Any, limit: int = 64) -> str | None:
    """A caller-chosen string as stored: strings only, cut to ``limit``."""
    return value[:limit] if isinstance(value, str) else None


# What a ledger integer column holds everywhere (PostgreSQL's INTEGER is 32 bits).
_INT_MAX = 2**31 - 1


def _count(value: Any) -> int:
    """A token count as the upstream reported it: a whole number ≥ 0 (capped at what a ledger
    column holds), else 0, never guessed."""
    count = whole_number(value)
    return min(count, _INT_MAX) if count is not None and count >= 0 else 0


@dataclass
class UsageRow:
    """One ledger row; the route fills it in as the request goes. Never prompt text or image data."""

    request_id: str
    api_key: str
    route: str
    client_ip: str | None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))
    model: str | None = None
    upstream_model: str | None = None
    provider: str | None = None
    status: int = 0
    error_code: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    images: int = 0
    size: str | None = None
    quality: str | None = None
    n: int | None = None
    latency_ms: float | None = None
    upstream_latency_ms: float | None = None
    pii_masked: int = 0
    guardrails_flagged: str | None = None  # monitor-mode guardrails that would have acted
    input_text_tokens: int | None = None  # from usage.input_tokens_details, when reported
    input_image_tokens: int | None = None
    input_cached_tokens: int | None = None  # from usage.prompt_tokens_details, when reported
    input_cache_write_tokens: int | None = None  # written to a prompt cache (Anthropic reports it)
    search_units: int | None = None  # rerank: what the upstream billed, when it says
    cost_usd: float | None = None  # None when no price applies
    idempotent_replay: bool = False  # answered from a stored answer: nothing generated, no tokens
    target: str | None = None  # the direct model that answered (or was tried last)
    attempts: int = 0  # upstream calls made for the request

    def note_request(self, body: dict[str, Any]) -> None:
        """Record what the caller asked for (as requested, whatever the upstream does)."""
        self.model = _short(body.get("model"), _TEXT_LIMIT)
        self.size = _short(body.get("size"))
        self.quality = _short(body.get("quality"))
        n = whole_number(body.get("n"))
        self.n = n if n is not None and 0 < n <= _INT_MAX else None

    def note_replay(self, status: int, error_code: str | None) -> None:
        """Record a replayed answer: its status and error code, and nothing spent."""
        self.idempotent_replay, self.status, self.error_code = True, status, error_code

    def note_guardrails(self, masked: int, flagged: list[str]) -> None:
        """Record how many PII matches were masked and which monitor-mode guardrails matched."""
        self.pii_masked = masked
        self.note_flagged(flagged)

    def note_flagged(self, names: list[str]) -> None:
        """Add monitor-mode guardrails that matched (the answer's, after the request's)."""
        known = self.guardrails_flagged.split(",") if self.guardrails_flagged else []
        self.guardrails_flagged = ",".join(dict.fromkeys([*known, *names]))[:256] or None

    def note_image_answer(self, document: Any) -> None:
        """Record the images an image answer returned and the tokens it reported."""
        if not isinstance(document, dict):
            return
        data = document.get("data")
        self.images = len(data) if isinstance(data, list) else 0
        self.note_usage(document.get("usage"))

    def note_answer_usage(self, document: Any) -> None:
        """Record the tokens an answer (chat, embeddings) reports in its ``usage``."""
        if isinstance(document, dict):
            self.note_usage(document.get("usage"))

    def add_image_event(self, event: dict[str, Any]) -> None:
        """Count a streamed image's ``*.completed`` event: one image, and its usage added."""
        if not str(event.get("type", "")).endswith(".completed"):
            return
        part = UsageRow(self.request_id, self.api_key, self.route, None)
        part.note_usage(event.get("usage"))
        self.images += 1
        for name in ("input_tokens", "output_tokens", "total_tokens"):
            setattr(self, name, min(getattr(self, name) + getattr(part, name), _INT_MAX))
        for name in ("input_text_tokens", "input_image_tokens"):
            if getattr(part, name) is not None:
                setattr(self, name, (getattr(self, name) or 0) + getattr(part, name))

    def note_usage(self, usage: Any) -> None:
        """Record the tokens of an OpenAI ``usage`` object (any route's names for them)."""
        if not isinstance(usage, dict):
            return
        self.input_tokens = _count(usage.get("input_tokens", usage.get("prompt_tokens")))
        self.output_tokens = _count(usage.get("output_tokens", usage.get("completion_tokens")))
        self.total_tokens = _count(usage.get("total_tokens")) or self.input_tokens + self.output_tokens
        details = usage.get("input_tokens_details", usage.get("prompt_tokens_details"))
        if isinstance(details, dict):
            if "text_tokens" in details or "image_tokens" in details:
                self.input_text_tokens = _count(details.get("text_tokens"))
                self.input_image_tokens = _count(details.get("image_tokens"))
            if "cached_tokens" in details:
                self.input_cached_tokens = _count(details.get("cached_tokens"))
            if "cache_write_tokens" in details:
                self.input_cache_write_tokens = _count(details.get("cache_write_tokens"))
