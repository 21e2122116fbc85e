"""The config file's shape as marshmallow schemas: they validate; unknown keys are kept."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validates_schema
from marshmallow.validate import Length, OneOf, Range, Regexp

from ..adapters import ADAPTERS
from ..usage.pricing import IMAGE_TOKEN_KINDS, TEXT_TOKEN_KINDS
from .resources import BUDGET_PERIODS, PII_DETECTORS, STRATEGIES

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Schema(Schema):
    class Meta:
        unknown = INCLUDE


def _name(**kwargs: Any) -> fields.String:
    return fields.String(validate=Length(min=1), **kwargs)


class _Timestamp(fields.Field[datetime]):
    """An ISO-8601 timestamp, or the datetime/date YAML already made of one; naive means UTC."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError("Not a valid ISO-8601 datetime.") from None
        elif isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if not isinstance(value, datetime):
            raise ValidationError("Not a valid ISO-8601 datetime.")
        return value if value.tzinfo else value.replace(tzinfo=UTC)


_seconds = fields.Float(validate=Range(min=0, min_inclusive=False))


_proxy_url = fields.String(
    validate=Regexp(r"^https?://[^/]+", error="Must be an http:// or https:// proxy URL.")
)
_ca_bundle = _name()


class UpstreamSchema(_Schema):
    connect_timeout_s = _seconds
    timeout_s = _seconds
    proxy = _proxy_url
    ca_bundle = _ca_bundle
    retries = fields.Integer(strict=True, validate=Range(min=0, max=5))
    cooldown_s = _seconds


class UsageSchema(_Schema):
    database_url = _name()
    journal = _name()
    queue_rows = fields.Integer(strict=True, validate=Range(min=1))


class RateLimitStorageSchema(_Schema):
    storage_url = fields.String(
        validate=Regexp(
            r"^(sqlite:///.+|rediss?://.*)$", error="Must be sqlite:///<file> or redis://host:port[/db]."
        )
    )


_limit = fields.Integer(strict=True, validate=Range(min=1))


class RateLimitSchema(_Schema):
    rpm = _limit
    rpd = _limit
    tpm = _limit
    tpd = _limit
    concurrency = _limit


class KeySchema(_Schema):
    display_name = _name()
    key_hash = fields.String(validate=Regexp(r"^[0-9a-fA-F]{64}$", error="Must be 64 hex digits (SHA-256)."))
    key_env = fields.String(validate=Regexp(ENV_NAME, error="Not a valid environment variable name."))
    allowed_models = fields.List(_name())
    disabled = fields.Boolean()
    expires_at = _Timestamp()
    rate_limit = fields.Nested(RateLimitSchema)
    budget = fields.Nested(lambda: BudgetSchema())

    @validates_schema
    def _one_secret(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("key_hash" in data) == ("key_env" in data):
            raise ValidationError("Give exactly one of key_hash or key_env.")


class BudgetSchema(_Schema):
    usd = fields.Float(required=True, validate=Range(min=0, min_inclusive=False))
    period = fields.String(required=True, validate=OneOf(BUDGET_PERIODS))


class CallerKeySchema(KeySchema):
    display_name = _name(required=True)


class IdempotencySchema(_Schema):
    ttl_s = _seconds
    max_answer_bytes = fields.Integer(strict=True, validate=Range(min=0))
    wait_s = fields.Float(validate=Range(min=0))


class GatewaySchema(_Schema):
    request_body_limit_bytes = fields.Integer(strict=True, validate=Range(min=1))
    upstream = fields.Nested(UpstreamSchema)
    usage = fields.Nested(UsageSchema)
    ratelimit = fields.Nested(RateLimitStorageSchema)
    admin_keys = fields.List(fields.Nested(KeySchema))
    access_log = fields.Boolean()
    trusted_proxy_hops = fields.Integer(strict=True, validate=Range(min=0, max=10))
    idempotency = fields.Nested(IdempotencySchema)
    stream_keepalive_s = _seconds


class ProviderKeySchema(_Schema):
    display_name = _name(required=True)
    provider = _name(required=True)
    adapter = fields.String(validate=OneOf(sorted(ADAPTERS)))
    api_key = fields.String()
    api_base = fields.String(validate=Regexp(r"^https?://", error="Must be an http:// or https:// URL."))
    api_version = fields.String(validate=Length(min=1))  # azure-openai: deployment URLs
    proxy = _proxy_url
    ca_bundle = _ca_bundle


_price = fields.Float(validate=Range(min=0))


class TokenPricesSchema(_Schema):
    """USD per million tokens: gpt-image's kinds, or a text model's (chat, embeddings, rerank)."""

    input_text = _price
    input_image = _price
    output_image = _price
    input = _price
    cached_input = _price
    cache_read = _price  # Anthropic's name for cached input
    cache_write = _price
    output = _price

    @validates_schema
    def _one_family(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "cached_input" in data and "cache_read" in data:
            raise ValidationError(
                "cached_input and cache_read are one price: give one of them.", "cache_read"
            )
        if any(k in data for k in IMAGE_TOKEN_KINDS) and any(k in data for k in TEXT_TOKEN_KINDS):
            raise ValidationError(
                f"Give either image token prices ({', '.join(IMAGE_TOKEN_KINDS)}) or text token "
                f"prices ({', '.join(TEXT_TOKEN_KINDS)}), not both."
            )


class PricingDefaultsSchema(_Schema):
    size = _name()
    quality = _name()


class _PriceTable(fields.Field[dict[str, dict[str, float]]]):
    """size → quality → USD per image; errors name the size and quality."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, dict[str, float]]:
        if not isinstance(value, dict):
            raise ValidationError("Must be a mapping of size to {quality: USD per image}.")
        errors: dict[str, Any] = {}
        for size, prices in value.items():
            if not isinstance(prices, dict):
                errors[str(size)] = ["Must be a mapping of quality to USD per image."]
                continue
            for quality, price in prices.items():
                if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
                    errors.setdefault(str(size), {})[str(quality)] = ["Must be a number ≥ 0."]
        if errors:
            raise ValidationError(errors)
        return {str(size): {str(q): float(p) for q, p in prices.items()} for size, prices in value.items()}


class PricingSchema(_Schema):
    per_image = _PriceTable()
    per_search_unit = _price
    per_million_tokens = fields.Nested(TokenPricesSchema)
    defaults = fields.Nested(PricingDefaultsSchema)


class TargetSchema(_Schema):
    model = _name(required=True)
    weight = fields.Integer(strict=True, validate=Range(min=1))
    priority = fields.Integer(strict=True)


class HashSourceSchema(_Schema):
    type = fields.String(required=True, validate=OneOf(["header", "api_key"]))
    name = _name()

    @validates_schema
    def _name_for_headers(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("type") == "header" and "name" not in data:
            raise ValidationError("A header source needs the header's name.", "name")
        if data.get("type") == "api_key" and "name" in data:
            raise ValidationError("Only a header source takes a name.", "name")


class RoutingSchema(_Schema):
    strategy = fields.String(validate=OneOf(STRATEGIES))
    targets = fields.List(fields.Nested(TargetSchema), required=True, validate=Length(min=1))
    retries = fields.Integer(strict=True, validate=Range(min=0, max=5))
    max_fallbacks = fields.Integer(strict=True, validate=Range(min=0))
    retry_on_429 = fields.Boolean()
    fallback_on_statuses = fields.List(fields.Integer(strict=True, validate=Range(min=400, max=599)))
    when_all_unavailable = fields.String(validate=OneOf(["fail", "try_anyway"]))
    hash_on = fields.List(fields.Nested(HashSourceSchema), validate=Length(min=1))

    @validates_schema
    def _strategy_fields(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "hash_on" in data and data.get("strategy") != "consistent_hash":
            raise ValidationError("Only the consistent_hash strategy takes hash_on.", "hash_on")


_DIRECT_ONLY = ("provider", "provider_key", "model_name", "timeout_s", "pricing", "max_tokens_default")


class ModelSchema(_Schema):
    """A direct model (provider, provider_key, model_name) or a routing one (routing: targets that
    are direct models)."""

    display_name = _name(required=True)
    provider = _name()
    model_name = _name()
    provider_key = _name()
    timeout_s = _seconds
    max_tokens_default = fields.Integer(strict=True, validate=Range(min=1))  # anthropic's max_tokens
    rate_limit = fields.Nested(RateLimitSchema)
    pricing = fields.Nested(PricingSchema)
    budget = fields.Nested(BudgetSchema)
    routing = fields.Nested(RoutingSchema)

    @validates_schema
    def _direct_or_routing(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "routing" in data:
            for name in _DIRECT_ONLY:
                if name in data:
                    raise ValidationError(
                        "A routing model takes none of provider, provider_key, model_name, "
                        "timeout_s, pricing, max_tokens_default: its targets have their own.",
                        name,
                    )
            return
        for name in ("provider", "provider_key"):
            if name not in data:
                raise ValidationError("Missing data for required field.", name)


class PatternSchema(_Schema):
    kind = fields.String(required=True, validate=OneOf(["literal", "regex"]))
    value = _name(required=True)


class CustomPatternSchema(_Schema):
    name = _name(required=True)
    pattern = _name(required=True)


class GuardrailSchema(_Schema):
    name = _name(required=True)
    kind = fields.String(required=True, validate=OneOf(["keyword", "pii"]))
    hook_point = fields.String(validate=OneOf(["input", "output", "both"]))
    enforcement_mode = fields.String(validate=OneOf(["enforce", "monitor"]))
    patterns = fields.List(fields.Nested(PatternSchema), validate=Length(min=1))
    action = fields.String(validate=OneOf(["block", "mask"]))
    detectors = fields.List(fields.String(validate=OneOf(PII_DETECTORS)), validate=Length(min=1))
    custom_patterns = fields.List(fields.Nested(CustomPatternSchema))

    @validates_schema
    def _fields_of_kind(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data.get("kind")
        if kind == "keyword" and "patterns" not in data:
            raise ValidationError("Missing data for required field.", "patterns")
        if kind == "keyword" and data.get("action") == "mask":
            raise ValidationError("mask is for pii guardrails; keyword guardrails block.", "action")
        for name in ("detectors", "custom_patterns"):
            if kind == "keyword" and name in data:
                raise ValidationError("Only pii guardrails take this field.", name)
        if kind == "pii" and "patterns" in data:
            raise ValidationError("pii guardrails take detectors and custom_patterns.", "patterns")


class ConfigSchema(_Schema):
    _format_version = fields.Raw()
    gateway = fields.Nested(GatewaySchema)
    provider_keys = fields.List(fields.Nested(ProviderKeySchema))
    models = fields.List(fields.Nested(ModelSchema))
    api_keys = fields.List(fields.Nested(CallerKeySchema))
    guardrails = fields.List(fields.Nested(GuardrailSchema))
