"""What a request cost, from the model's ``pricing`` block and what the upstream reported."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TOKEN_KINDS = ("input_text", "input_image", "output_image")


@dataclass(frozen=True)
class Pricing:
    """USD prices: per image by size and quality (dall-e), per 1M tokens by kind (gpt-image)."""

    per_image: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    per_million_tokens: Mapping[str, float] = field(default_factory=dict)
    default_size: str | None = None  # what the upstream uses when a request names no size
    default_quality: str | None = None

    def cost(self, usage: Any) -> float | None:
        """The cost of a successful answer, or None when no price applies (never a guess).

        ``usage`` is a ledger row. Reported tokens already cover every image of the request,
        so they are not multiplied by ``n``; per-image prices count the images returned.
        """
        if not 200 <= usage.status < 300:
            return None
        if usage.total_tokens and self.per_million_tokens:
            return self._token_cost(usage)
        if self.per_image:
            size = usage.size or self.default_size
            quality = usage.quality or self.default_quality
            price = self.per_image.get(size or "", {}).get(quality or "")
            return None if price is None else round(price * usage.images, 6)
        return None

    def _token_cost(self, usage: Any) -> float | None:
        prices = self.per_million_tokens
        if usage.input_text_tokens is not None or usage.input_image_tokens is not None:
            text, image = usage.input_text_tokens or 0, usage.input_image_tokens or 0
        elif prices.get("input_image", prices.get("input_text")) == prices.get("input_text"):
            text, image = usage.input_tokens, 0  # no breakdown, but both kinds cost the same
        else:
            return None  # no breakdown and the kinds cost differently: not guessed
        total = 0.0
        for kind, tokens in (
            ("input_text", text),
            ("input_image", image),
            ("output_image", usage.output_tokens),
        ):
            if tokens:
                if kind not in prices:
                    return None
                total += tokens * prices[kind]
        return round(total / 1_000_000, 6)
