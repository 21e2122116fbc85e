"""What a request cost, from the model's ``pricing`` block and what the upstream reported.

Every price is USD per unit of something the upstream reported or returned: images (by size and
quality), tokens (by kind, per million) or rerank search units. A request's cost is the sum over
what it used; when it used something without a price, the cost is None, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# gpt-image models report their input split into text and image tokens and bill them differently.
IMAGE_TOKEN_KINDS = ("input_text", "input_image", "output_image")
# Text models (chat, embeddings, rerank): input, the part of it read from a prompt cache
# (``cached_input``, or as Anthropic names it ``cache_read``), the part written to one
# (``cache_write``: Anthropic bills it apart), output.
TEXT_TOKEN_KINDS = ("input", "cached_input", "cache_read", "cache_write", "output")


@dataclass(frozen=True)
class Pricing:
    """USD prices: per image by size and quality (dall-e), per 1M tokens by kind (gpt-image, chat,
    embeddings), per rerank search unit."""

    per_image: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    per_million_tokens: Mapping[str, float] = field(default_factory=dict)
    per_search_unit: float | None = None
    default_size: str | None = None  # what the upstream uses when a request names no size
    default_quality: str | None = None

    def cost(self, usage: Any) -> float | None:
        """The cost of an answered request (``usage`` is its ledger row), or None.

        Reported tokens already cover every image of the request, so they are not multiplied by
        ``n``; per-image prices count the images returned.
        """
        costs = []
        if usage.total_tokens and self.per_million_tokens:
            units = _token_units(usage, self.per_million_tokens)
            costs.append(None if units is None else _priced(units, self.per_million_tokens, 1_000_000))
        elif self.per_image:
            price = self.image_price(usage.size, usage.quality)
            costs.append(None if price is None else price * usage.images)
        if usage.search_units:
            costs.append(None if self.per_search_unit is None else usage.search_units * self.per_search_unit)
        known = [cost for cost in costs if cost is not None]
        if not costs or len(known) < len(costs):
            return None
        return round(sum(known), 10)  # to the 1e-10 USD: a token can cost less than a micro-dollar

    def known_before(
        self,
        n: int | None,
        size: str | None,
        quality: str | None,
        token_kinds: tuple[tuple[str, ...], ...] = (),
        search_units: bool = True,
    ) -> float | None:
        """What a request will cost, when its price does not depend on the answer: ``n`` images
        (1 when not said) at a per-image price; 0 when only the answer tells (tokens, search
        units); None when it cannot be priced: no price for the request's size and quality, token
        prices that name none of the sets of ``token_kinds`` (the kinds the route's answers
        report), or only a search-unit price for a route that reports none (not ``search_units``)."""
        if self.per_million_tokens:
            return 0.0 if self.prices_tokens(token_kinds) else None
        if not self.per_image:
            return 0.0 if self.per_search_unit is not None and search_units else None
        price = self.image_price(size, quality)
        return None if price is None else (n or 1) * price

    def prices_tokens(self, token_kinds: tuple[tuple[str, ...], ...]) -> bool:
        """Whether the token prices name every kind of one of the sets (or no set is asked for)."""
        return not token_kinds or any(
            all(kind in self.per_million_tokens for kind in kinds) for kinds in token_kinds
        )

    def image_price(self, size: str | None, quality: str | None) -> float | None:
        """The price of one image of ``size`` and ``quality`` (the defaults when not named)."""
        size, quality = size or self.default_size, quality or self.default_quality
        return self.per_image.get(size or "", {}).get(quality or "")


def _token_units(usage: Any, prices: Mapping[str, float]) -> dict[str, int] | None:
    """Tokens by the kinds ``prices`` names, or None when the split cannot be known."""
    if any(kind in prices for kind in IMAGE_TOKEN_KINDS):
        if usage.input_text_tokens is not None or usage.input_image_tokens is not None:
            text, image = usage.input_text_tokens or 0, usage.input_image_tokens or 0
        elif prices.get("input_image", prices.get("input_text")) == prices.get("input_text"):
            text, image = usage.input_tokens, 0  # no breakdown, but both kinds cost the same
        else:
            return None  # no breakdown and the kinds cost differently: not guessed
        return {"input_text": text, "input_image": image, "output_image": usage.output_tokens}
    # Cached tokens without a price of their own cost what input costs; a report cannot cache more
    # than its input.
    read_kind = "cache_read" if "cache_read" in prices else "cached_input"
    read = min(usage.input_cached_tokens or 0, usage.input_tokens) if read_kind in prices else 0
    written = (usage.input_cache_write_tokens or 0) if "cache_write" in prices else 0
    written = min(written, usage.input_tokens - read)
    return {
        "input": usage.input_tokens - read - written,
        read_kind: read,
        "cache_write": written,
        "output": usage.output_tokens,
    }


def _priced(units: Mapping[str, int], prices: Mapping[str, float], per: int) -> float | None:
    total = 0.0
    for kind, count in units.items():
        if count:
            if kind not in prices:
                return None
            total += count * prices[kind]
    return total / per
