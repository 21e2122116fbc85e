"""Model alias → Plan: exact aliases first, then the most specific wildcard; a routing model's
plan holds its targets' routes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .resources import Model, ProviderKey, Routing


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


@dataclass(frozen=True)
class Candidate:
    """A target a request may be sent to: a direct model's route, with its routing weight and tier."""

    route: Route
    weight: int = 1
    priority: int = 0


@dataclass(frozen=True)
class Plan:
    """What the alias a caller named resolved to: the row it names (whose limits and budget count
    once per request) and the targets behind it; a direct model is its own one target."""

    alias: str
    model: Model
    candidates: tuple[Candidate, ...]

    @property
    def routing(self) -> Routing | None:
        """The routing block, or None for a direct model."""
        return self.model.routing


class Router:
    """Resolves caller-facing aliases against the configured model rows."""

    def __init__(self, models: Iterable[Model], provider_keys: Mapping[str, ProviderKey]) -> None:
        models = list(models)
        self._exact = {m.display_name: m for m in models if "*" not in m.display_name}
        wildcards = [Wildcard.compile(m) for m in models if "*" in m.display_name]
        # Most specific first; sorted() is stable, so ties keep file order.
        self._wildcards = sorted(wildcards, key=lambda w: -w.specificity)
        self._provider_keys = dict(provider_keys)
        self._targets = {
            m.display_name: tuple(
                Candidate(self._direct(t.model, self._exact[t.model]), t.weight, t.priority)
                for t in m.routing.targets
            )
            for m in models
            if m.routing is not None
        }

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)

    def exact(self) -> list[Model]:
        """The rows whose alias is a name, not a pattern, in alias order."""
        return sorted(self._exact.values(), key=lambda m: m.display_name)

    def patterns(self) -> list[Model]:
        """The wildcard rows, most specific first."""
        return [w.model for w in self._wildcards]

    def routing_plans(self) -> list[Plan]:
        """The plan of every routing model, in alias order."""
        return [Plan(alias, self._exact[alias], targets) for alias, targets in sorted(self._targets.items())]

    def _direct(self, alias: str, model: Model, upstream: str | None = None) -> Route:
        return Route(
            alias, model, self._provider_keys[model.provider_key], upstream or model.model_name or alias
        )

    def resolve(self, alias: str) -> Plan | None:
        """Find the plan for ``alias``, or None when no row matches."""
        model = self._exact.get(alias)
        if model is not None:
            targets = self._targets.get(alias)
            if targets is not None:
                return Plan(alias, model, targets)
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
        return Plan(alias, model, (Candidate(self._direct(alias, model, upstream)),))
