"""Config file → ${VAR} expansion → marshmallow validation → a frozen Config."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import yaml
from marshmallow import ValidationError

from ..adapters import default_adapter
from ..usage.pricing import IMAGE_TOKEN_KINDS, TEXT_TOKEN_KINDS, Pricing
from .aliases import Router
from .checks import cross_check, expand, flatten, unknown_fields
from .resources import (
    DEFAULT_HASH_ON,
    PII_DETECTORS,
    ApiKey,
    Budget,
    Guardrail,
    HashSource,
    IdempotencySettings,
    Model,
    Pattern,
    ProviderKey,
    RateLimit,
    Routing,
    RoutingTarget,
    UpstreamSettings,
    UsageSettings,
)
from .schemas import ConfigSchema

DEFAULT_BODY_LIMIT = 25 * 1024 * 1024
TOKEN_KINDS = (*IMAGE_TOKEN_KINDS, *TEXT_TOKEN_KINDS)
DEFAULT_RATELIMIT_URL = "sqlite:///var/ratelimit.db"


class ConfigError(Exception):
    """The config file cannot be used; ``problems`` lists every reason by path."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid config {path}:\n{lines}")


@dataclass(frozen=True)
class GatewaySettings:
    """The ``gateway:`` block."""

    request_body_limit_bytes: int = DEFAULT_BODY_LIMIT
    upstream: UpstreamSettings = UpstreamSettings()
    usage: UsageSettings = UsageSettings()
    ratelimit_storage_url: str = DEFAULT_RATELIMIT_URL
    admin_keys: tuple[ApiKey, ...] = ()
    access_log: bool = True
    trusted_proxy_hops: int = 0
    idempotency: IdempotencySettings = IdempotencySettings()
    stream_keepalive_s: float = 15.0  # a ": keep-alive" comment this often while a stream is silent


@dataclass(frozen=True)
class Config:
    """Everything the config file says, parsed once; request handling reads only this."""

    path: str
    settings: GatewaySettings  # the ``gateway:`` block
    provider_keys: Mapping[str, ProviderKey]
    router: Router
    api_keys: tuple[ApiKey, ...]
    guardrails: tuple[Guardrail, ...]
    warnings: tuple[str, ...] = ()
    modified_at: int = 0  # the file's mtime (seconds): what GET /v1/models says as ``created``

    @cached_property
    def input_guardrails(self) -> tuple[Guardrail, ...]:
        """Guardrails that inspect the prompt (worked out once per config)."""
        return tuple(g for g in self.guardrails if g.checks_input)

    @cached_property
    def output_guardrails(self) -> tuple[Guardrail, ...]:
        """Guardrails that inspect the answer's text."""
        return tuple(g for g in self.guardrails if g.checks_output)


def load_config(path: str) -> Config:
    """Read, expand, validate and freeze the config file; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            modified_at = int(os.fstat(f.fileno()).st_mtime)
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, [f"config file not found: {os.path.abspath(path)}"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(path, [f"cannot read config: {e}"]) from None
    if raw is None or raw == {}:
        # What an editor that saves in place leaves for a moment, or a file that lost its content:
        # never a config to serve (it would refuse every caller).
        raise ConfigError(path, ["the config file is empty: it defines no provider_keys, models or api_keys"])
    if not isinstance(raw, dict):
        raise ConfigError(path, ["the config file must be a YAML mapping"])

    warnings: list[str] = []
    data = expand(raw, "", warnings)
    problems: list[str] = []
    try:
        loaded = ConfigSchema().load(data)
    except ValidationError as e:
        problems.extend(flatten(e.messages, ""))
        loaded = None
    problems.extend(cross_check(data))
    if problems:
        raise ConfigError(path, sorted(set(problems), key=problems.index))
    warnings.extend(unknown_fields(ConfigSchema(), data, ""))
    for collection, consequence in (
        ("api_keys", "every request to /v1 is refused with 401"),
        ("models", "every request to /v1 is refused with 404"),
    ):
        if not loaded.get(collection):
            warnings.append(f"{collection}: none configured; {consequence}")
    return _build(path, loaded, warnings, modified_at)


def hash_key(secret: str) -> str:
    """The ``key_hash`` of a caller key: SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _api_key(row: Mapping[str, Any], path: str, warnings: list[str]) -> ApiKey:
    if "key_hash" in row:
        digest: bytes | None = bytes.fromhex(row["key_hash"])
    else:
        secret = os.environ.get(row["key_env"], "")
        if not secret:
            warnings.append(f"{path}.key_env: {row['key_env']} is not set; this key cannot authenticate")
        digest = hashlib.sha256(secret.encode("utf-8")).digest() if secret else None
    allowed = row.get("allowed_models")
    return ApiKey(
        display_name=row.get("display_name", path),
        key_hash=digest,
        allowed_models=None if allowed is None else tuple(allowed),
        disabled=row.get("disabled", False),
        expires_at=row.get("expires_at"),
        rate_limit=_rate_limit(row),
        budget=_budget(row),
    )


def _build(path: str, data: Mapping[str, Any], warnings: list[str], modified_at: int) -> Config:
    gw = data.get("gateway", {})
    upstream = gw.get("upstream", {})
    settings = GatewaySettings(
        request_body_limit_bytes=gw.get("request_body_limit_bytes", DEFAULT_BODY_LIMIT),
        upstream=UpstreamSettings(
            connect_timeout_s=upstream.get("connect_timeout_s", UpstreamSettings.connect_timeout_s),
            timeout_s=upstream.get("timeout_s", UpstreamSettings.timeout_s),
            proxy=upstream.get("proxy") or None,
            ca_bundle=upstream.get("ca_bundle") or None,
            retries=upstream.get("retries", UpstreamSettings.retries),
            cooldown_s=upstream.get("cooldown_s", UpstreamSettings.cooldown_s),
        ),
        usage=UsageSettings(**gw.get("usage", {})),
        ratelimit_storage_url=gw.get("ratelimit", {}).get("storage_url", DEFAULT_RATELIMIT_URL),
        access_log=gw.get("access_log", True),
        trusted_proxy_hops=gw.get("trusted_proxy_hops", 0),
        idempotency=IdempotencySettings(**gw.get("idempotency", {})),
        stream_keepalive_s=gw.get("stream_keepalive_s", GatewaySettings.stream_keepalive_s),
        admin_keys=tuple(
            _api_key(row, f"gateway.admin_keys[{i}]", warnings)
            for i, row in enumerate(gw.get("admin_keys", []))
        ),
    )
    provider_keys = {
        row["display_name"]: ProviderKey(
            display_name=row["display_name"],
            provider=row["provider"],
            adapter=row.get("adapter") or default_adapter(row["provider"]),
            api_key=row.get("api_key", ""),
            api_base=row.get("api_base") or None,
            proxy=row.get("proxy") or None,
            ca_bundle=row.get("ca_bundle") or None,
            api_version=row.get("api_version") or None,
        )
        for row in data.get("provider_keys", [])
    }
    rows = data.get("models", [])
    providers = {row["display_name"]: row.get("provider", "") for row in rows}
    models = [
        Model(
            display_name=row["display_name"],
            provider=row.get("provider") or providers[row["routing"]["targets"][0]["model"]],
            provider_key=row.get("provider_key", ""),
            model_name=row.get("model_name"),
            timeout_s=row.get("timeout_s"),
            max_tokens_default=row.get("max_tokens_default", Model.max_tokens_default),
            rate_limit=_rate_limit(row),
            pricing=_pricing(row.get("pricing")),
            budget=_budget(row),
            routing=_routing(row.get("routing")),
        )
        for row in rows
    ]
    for i, model in enumerate(models):
        if model.routing is None and model.provider != provider_keys[model.provider_key].provider:
            warnings.append(
                f"models[{i}].provider: {model.provider!r} differs from its provider key's "
                f"provider {provider_keys[model.provider_key].provider!r}"
            )
    for name, key in provider_keys.items():
        if not key.api_key:
            warnings.append(f"provider key {name!r} has no api_key; its models will answer 503")
    guardrails = tuple(_guardrail(row) for row in data.get("guardrails", []))
    return Config(
        path=path,
        settings=settings,
        provider_keys=MappingProxyType(provider_keys),
        router=Router(models, provider_keys),
        api_keys=tuple(
            _api_key(row, f"api_keys[{i}]", warnings) for i, row in enumerate(data.get("api_keys", []))
        ),
        guardrails=guardrails,
        warnings=tuple(warnings),
        modified_at=modified_at,
    )


def _guardrail(row: Mapping[str, Any]) -> Guardrail:
    pii = row["kind"] == "pii"
    return Guardrail(
        name=row["name"],
        kind=row["kind"],
        hook_point=row.get("hook_point", "input"),
        patterns=tuple(_pattern(p["kind"], p["value"]) for p in row.get("patterns", [])),
        detectors=tuple(row.get("detectors", PII_DETECTORS)) if pii else (),
        custom_patterns=tuple((p["name"], p["pattern"]) for p in row.get("custom_patterns", [])),
        action=row.get("action", "block"),
        enforcement_mode=row.get("enforcement_mode", "enforce"),
    )


def _pricing(block: Mapping[str, Any] | None) -> Pricing | None:
    if not block:
        return None
    defaults = block.get("defaults", {})
    return Pricing(
        per_image=MappingProxyType(
            {size: MappingProxyType(dict(q)) for size, q in block.get("per_image", {}).items()}
        ),
        per_million_tokens=MappingProxyType(
            {k: v for k, v in block.get("per_million_tokens", {}).items() if k in TOKEN_KINDS}
        ),
        per_search_unit=block.get("per_search_unit"),
        default_size=defaults.get("size"),
        default_quality=defaults.get("quality"),
    )


def _routing(block: Mapping[str, Any] | None) -> Routing | None:
    if block is None:
        return None
    hash_on = block.get("hash_on")
    return Routing(
        targets=tuple(
            RoutingTarget(t["model"], t.get("weight", 1), t.get("priority", 0)) for t in block["targets"]
        ),
        strategy=block.get("strategy", "failover"),
        retries=block.get("retries"),
        max_fallbacks=block.get("max_fallbacks"),
        retry_on_429=block.get("retry_on_429", True),
        fallback_on_statuses=frozenset(block.get("fallback_on_statuses", ())),
        when_all_unavailable=block.get("when_all_unavailable", "fail"),
        hash_on=tuple(HashSource(h["type"], h.get("name")) for h in hash_on) if hash_on else DEFAULT_HASH_ON,
    )


def _budget(row: Mapping[str, Any]) -> Budget | None:
    block = row.get("budget")
    return Budget(usd=block["usd"], period=block["period"]) if block else None


def _rate_limit(row: Mapping[str, Any]) -> RateLimit:
    limits = row.get("rate_limit") or {}
    return RateLimit(**{name: limits.get(name) for name in RateLimit.__dataclass_fields__})


def _pattern(kind: str, value: str) -> Pattern:
    # A literal is stored casefolded: the prompt is folded once per request, not per pattern.
    if kind == "regex":
        return Pattern(kind, value, re.compile(value))
    return Pattern(kind, value.casefold())
