"""Model alias → Route: exact aliases first, then the most specific wildcard."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .resources import Model, ProviderKey


@dataclass(frozen=True)
class Wildcard:
    """A model row whose ``display_name`` holds one ``*``."""

    model: Model
    regex: re.Pattern[str]
    specificity: int

    @classmethod
    def compile(cls, model: Model) -> Wildcard:
        """Turn ``openai/*`` into a pattern that captures the ``*`` part."""
        prefix, _, suffix = model.display_name.partition("*")
        regex = re.compile(f"{re.escape(prefix)}(.*){re.escape(suffix)}", re.DOTALL)
        return cls(model, regex, len(prefix) + len(suffix))


@dataclass(frozen=True)
class Route:
    """What an alias resolved to: the configured row, its key and the upstream model id."""

    alias: str
    model: Model
    provider_key: ProviderKey
    upstream_model: str


class Router:
    """Resolves caller-facing aliases against the configured model rows."""

    def __init__(self, models: Iterable[Model], provider_keys: Mapping[str, ProviderKey]) -> None:
        models = list(models)
        self._exact = {m.display_name: m for m in models if "*" not in m.display_name}
        wildcards = [Wildcard.compile(m) for m in models if "*" in m.display_name]
        # Most specific first; sorted() is stable, so ties keep file order.
        self._wildcards = sorted(wildcards, key=lambda w: -w.specificity)
        self._provider_keys = dict(provider_keys)

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)

    def exact(self) -> list[Model]:
        """The rows whose alias is a name, not a pattern, in alias order."""
        return sorted(self._exact.values(), key=lambda m: m.display_name)

    def patterns(self) -> list[Model]:
        """The wildcard rows, most specific first."""
        return [w.model for w in self._wildcards]

    def resolve(self, alias: str) -> Route | None:
        """Find the route for ``alias``, or None when no row matches."""
        model = self._exact.get(alias)
        if model is not None:
            upstream = model.model_name or alias
        else:
            for wildcard in self._wildcards:
                match = wildcard.regex.fullmatch(alias)
                if match:
                    model, captured = wildcard.model, match.group(1)
                    break
            else:
                return None
            upstream = captured if model.model_name is None else model.model_name.replace("*", captured)
        return Route(alias, model, self._provider_keys[model.provider_key], upstream)
