"""What the config file's data goes through before it is built: ``${VAR}`` expansion, marshmallow's
messages as ``path: message`` lines, the checks across rows a schema cannot make, and the fields no
schema knows (warned about, not refused)."""

from __future__ import annotations

import os
import re
from typing import Any

from marshmallow import Schema, fields

from ..adapters import default_adapter

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: Any, path: str, warnings: list[str]) -> Any:
    """Replace ``${VAR}`` in every string from the environment (unset → "" and a warning)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                warnings.append(f"{path or '<root>'}: environment variable {name} is not set")
            return os.environ.get(name, "")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand(v, _join(path, k), warnings) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, _join(path, i), warnings) for i, v in enumerate(value)]
    return value


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def flatten(messages: Any, path: str) -> list[str]:
    """marshmallow's nested error dict → ``models[2].provider: message`` lines."""
    if isinstance(messages, dict):
        out = []
        for key, value in messages.items():
            out.extend(flatten(value, path if key == "_schema" else _join(path, key)))
        return out
    if isinstance(messages, list):
        return [line for m in messages for line in flatten(m, path)]
    return [f"{path or '<root>'}: {messages}"]


def _items(data: Any, key: str) -> list[tuple[str, dict[str, Any]]]:
    """The well-formed mappings of a top-level collection, with their paths."""
    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [(f"{key}[{i}]", row) for i, row in enumerate(rows) if isinstance(row, dict)]


def cross_check(data: dict[str, Any]) -> list[str]:
    """Problems a single-row schema cannot see: duplicates, references, wildcards, regexes."""
    problems = []
    for collection, name_field in (
        ("provider_keys", "display_name"),
        ("models", "display_name"),
        ("api_keys", "display_name"),
        ("guardrails", "name"),
    ):
        seen: set[Any] = set()
        for path, row in _items(data, collection):
            name = row.get(name_field)
            if isinstance(name, str) and name in seen:
                problems.append(f"{path}.{name_field}: duplicate {name_field} {name!r}")
            seen.add(name)

    provider_keys = {row.get("display_name"): row for _, row in _items(data, "provider_keys")}
    for path, row in _items(data, "provider_keys"):
        provider = row.get("provider")
        if isinstance(provider, str) and not row.get("api_base"):
            # Only OpenAI's and Anthropic's own APIs have a default address, each for its own key.
            adapter = row.get("adapter") or default_adapter(provider)
            if not (adapter == "anthropic" or (adapter == "openai" and provider == "openai")):
                problems.append(f"{path}.api_base: required for provider {provider!r} (adapter {adapter!r})")

    gateway = data.get("gateway")
    upstream_settings = gateway.get("upstream") if isinstance(gateway, dict) else None
    places: list[tuple[str, Any]] = [("gateway.upstream", upstream_settings), *_items(data, "provider_keys")]
    for path, row in places:
        bundle = row.get("ca_bundle") if isinstance(row, dict) else None
        if isinstance(bundle, str) and bundle and not os.path.isfile(bundle):
            problems.append(f"{path}.ca_bundle: no such file: {bundle}")

    models = {row.get("display_name"): row for _, row in _items(data, "models")}
    for path, row in _items(data, "models"):
        problems += _routing_problems(path, row, models)
        key, name, upstream = row.get("provider_key"), row.get("display_name"), row.get("model_name")
        if isinstance(key, str) and key not in provider_keys:
            problems.append(f"{path}.provider_key: unknown provider key {key!r}")
        if isinstance(name, str) and name.count("*") > 1:
            problems.append(f"{path}.display_name: at most one '*' is allowed")
        if isinstance(upstream, str) and "*" in upstream and isinstance(name, str) and "*" not in name:
            problems.append(f"{path}.model_name: '*' needs a '*' in display_name to fill it")

    for path, row in _items(data, "guardrails"):
        for collection, field, is_regex in (
            ("patterns", "value", lambda p: p.get("kind") == "regex"),
            ("custom_patterns", "pattern", lambda p: True),
        ):
            rows = row.get(collection)
            for i, pattern in enumerate(rows if isinstance(rows, list) else []):
                if isinstance(pattern, dict) and is_regex(pattern):
                    try:
                        re.compile(str(pattern.get(field)))
                    except re.error as e:
                        problems.append(f"{path}.{collection}[{i}].{field}: invalid regex: {e}")
    return problems


def _routing_problems(path: str, row: dict[str, Any], models: dict[Any, Any]) -> list[str]:
    """A routing model's targets: direct models named by their exact alias, each once."""
    routing = row.get("routing")
    if not isinstance(routing, dict):
        return []
    problems = []
    name = row.get("display_name")
    if isinstance(name, str) and "*" in name:
        problems.append(f"{path}.display_name: a routing model's alias cannot hold '*'")
    targets = routing.get("targets")
    seen: set[str] = set()
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        alias = target.get("model") if isinstance(target, dict) else None
        if not isinstance(alias, str):
            continue
        where = f"{path}.routing.targets[{i}].model"
        model = models.get(alias)
        if alias in seen:
            problems.append(f"{where}: {alias!r} is already a target of this model")
        elif model is None:
            problems.append(f"{where}: unknown model {alias!r} (a target is named by its exact alias)")
        elif "*" in alias:
            problems.append(f"{where}: a wildcard model cannot be a target")
        elif "routing" in model:
            problems.append(f"{where}: {alias!r} is a routing model; a target must be a direct model")
        seen.add(alias)
    return problems


def unknown_fields(schema: Schema, data: Any, path: str) -> list[str]:
    """Warn about keys no schema declares (kept so an AISIX file still loads, but unused here)."""
    if not isinstance(data, dict):
        return []
    out = []
    for key, value in data.items():
        field = schema.fields.get(key)
        if field is None:
            out.append(f"{_join(path, key)}: unknown field, ignored")
        elif isinstance(field, fields.Nested):
            out.extend(unknown_fields(field.schema, value, _join(path, key)))
        elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
            for i, row in enumerate(value if isinstance(value, list) else []):
                out.extend(unknown_fields(field.inner.schema, row, _join(_join(path, key), i)))
    return out
