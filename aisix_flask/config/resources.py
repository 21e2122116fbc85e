"""The configured resources as frozen values: provider keys, models, caller keys, guardrails."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase

from ..usage.ledger import DEFAULT_JOURNAL, DEFAULT_QUEUE_ROWS
from ..usage.pricing import Pricing


@dataclass(frozen=True)
class UpstreamSettings:
    """Timeouts for every upstream call (a model's ``timeout_s`` overrides the read timeout)."""

    connect_timeout_s: float = 5.0
    timeout_s: float = 300.0
    proxy: str | None = field(default=None, repr=False)  # may carry credentials
    ca_bundle: str | None = None
    retries: int = 1  # same-target tries again after a failure before anything was sent
    cooldown_s: float = 30.0  # how long a target that failed is skipped


@dataclass(frozen=True)
class UsageSettings:
    """Where the ledger's rows go: its database, and the local journal that keeps them while
    the database does not take them (README, "Usage and cost")."""

    database_url: str = "sqlite:///var/usage.db"
    journal: str = DEFAULT_JOURNAL
    queue_rows: int = DEFAULT_QUEUE_ROWS  # rows a worker holds in memory before they go to the journal


@dataclass(frozen=True)
class RateLimit:
    """AISIX's ``rate_limit`` block: any subset of the five limits."""

    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    concurrency: int | None = None

    def __bool__(self) -> bool:
        return any((self.rpm, self.rpd, self.tpm, self.tpd, self.concurrency))


BUDGET_PERIODS = ("day", "week", "month", "total")
# The built-in PII detectors a ``pii`` guardrail may name (policy.pii has what each one finds).
PII_DETECTORS = ("email", "phone", "credit_card", "us_ssn", "ip_address", "api_key")


@dataclass(frozen=True)
class Budget:
    """A ``budget`` block: at most ``usd`` per UTC calendar ``period`` (or in ``total``)."""

    usd: float
    period: str


@dataclass(frozen=True)
class ProviderKey:
    """An upstream credential and where to use it."""

    display_name: str
    provider: str
    adapter: str
    api_key: str = field(repr=False)
    api_base: str | None = None
    proxy: str | None = field(default=None, repr=False)  # may carry credentials
    ca_bundle: str | None = None
    api_version: str | None = None  # azure-openai: deployment URLs with ?api-version=


STRATEGIES = ("failover", "round_robin", "least_busy", "least_latency", "consistent_hash")


@dataclass(frozen=True)
class RoutingTarget:
    """One target of a routing model: a direct model, by alias."""

    model: str
    weight: int = 1
    priority: int = 0  # tiers: a lower one is tried only when every higher one cannot answer


@dataclass(frozen=True)
class HashSource:
    """What consistent_hash keys on: a request header (by name) or the caller key."""

    type: str
    name: str | None = None


DEFAULT_HASH_ON = (HashSource("header", "x-aisix-routing-key"), HashSource("api_key"))


@dataclass(frozen=True)
class Routing:
    """A routing model's ``routing`` block (README, "Routing and failover")."""

    targets: tuple[RoutingTarget, ...]
    strategy: str = "failover"
    retries: int | None = None  # None: gateway.upstream.retries
    max_fallbacks: int | None = None  # None: every target
    retry_on_429: bool = True
    fallback_on_statuses: frozenset[int] = frozenset()
    when_all_unavailable: str = "fail"
    hash_on: tuple[HashSource, ...] = DEFAULT_HASH_ON


@dataclass(frozen=True)
class Model:
    """A caller-facing alias (``display_name``, may hold one ``*``) and its upstream; or, with
    ``routing``, the direct models it sends to (then ``provider`` is its first target's and
    ``provider_key`` is empty)."""

    display_name: str
    provider: str
    provider_key: str
    model_name: str | None = None
    timeout_s: float | None = None
    max_tokens_default: int = 4096  # anthropic: the max_tokens sent when the caller gives none
    rate_limit: RateLimit = RateLimit()
    pricing: Pricing | None = None
    budget: Budget | None = None
    routing: Routing | None = None


@dataclass(frozen=True)
class ApiKey:
    """A caller (or admin) key, kept only as the SHA-256 digest of its secret."""

    display_name: str
    key_hash: bytes | None = field(repr=False)
    allowed_models: tuple[str, ...] | None = None
    disabled: bool = False
    expires_at: datetime | None = None
    rate_limit: RateLimit = RateLimit()
    budget: Budget | None = None

    def may_use(self, alias: str) -> bool:
        """Tell whether ``allowed_models`` admits ``alias`` (absent: every alias)."""
        if self.allowed_models is None:
            return True
        return any(fnmatchcase(alias, pattern) for pattern in self.allowed_models)


@dataclass(frozen=True)
class Pattern:
    """One guardrail pattern: a case-insensitive literal (stored casefolded) or a compiled regex."""

    kind: str
    value: str = field(repr=False)
    regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def matches(self, text: str, folded: str) -> bool:
        """Search ``text`` (``folded`` is its casefold, computed once per request)."""
        if self.regex is not None:
            return self.regex.search(text) is not None
        return self.value in folded


@dataclass(frozen=True)
class Guardrail:
    """A named input/output check: ``keyword`` patterns or ``pii`` detectors."""

    name: str
    kind: str
    hook_point: str = "input"
    patterns: tuple[Pattern, ...] = ()
    detectors: tuple[str, ...] = ()  # pii: the built-in detectors it runs, by name
    custom_patterns: tuple[tuple[str, str], ...] = ()  # pii: (name, regex) of its own detectors
    action: str = "block"  # block | mask (pii)
    enforcement_mode: str = "enforce"  # enforce | monitor: record what it would do, do nothing

    @property
    def monitor_only(self) -> bool:
        """Whether the guardrail only records what it would have done."""
        return self.enforcement_mode == "monitor"

    @property
    def checks_input(self) -> bool:
        """Whether the guardrail inspects the request side."""
        return self.hook_point in ("input", "both")

    @property
    def checks_output(self) -> bool:
        """Whether the guardrail inspects the answer's text (chat completions)."""
        return self.hook_point in ("output", "both")


@dataclass(frozen=True)
class IdempotencySettings:
    """``gateway.idempotency``: how long answers are kept, how large, how long a repeat waits."""

    ttl_s: float = 86400.0
    max_answer_bytes: int = 32 * 1024 * 1024  # a 4-image b64_json answer fits
    wait_s: float = 10.0
