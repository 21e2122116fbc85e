"""The package's layers point one way: a module imports only from its own layer or the ones below.

Config describes (it builds no runtime objects of the layers above it), stores and usage keep
records, policy decides, the proxy runs the request path, and the routes sit on top. An import
that points up (anywhere in a module: at its top, in a function, under TYPE_CHECKING) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aisix_flask"

# Lowest first. A top-level module or subpackage of aisix_flask → its layer.
LAYERS = (
    {"__version__", "errors", "redact", "jsonvalues", "adapters", "metrics", "eventlog", "workers"},
    {"stores", "usage"},
    {"config"},
    {"policy", "providers"},
    {"gateway", "incoming"},
    {"access", "proxy"},
    {"api", "admin", "cli", "__init__"},  # the package itself is the app factory: it wires all
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _component(module: str) -> str:
    """``aisix_flask.policy.limits`` → ``policy``; the package itself (the app factory) →
    ``__init__``, but its ``__version__`` (a constant) is its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in ``path`` (under ``root``)."""
    package = list(path.relative_to(root.parent).parts[:-1])  # a module's package, or the package itself
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
            found += [(node.lineno, name) for name in names if name.startswith("aisix_flask")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("aisix_flask")]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert parts - set(LAYER) == set()
    assert set(LAYER) - parts == {"__version__"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = _component(".".join(("aisix_flask", *path.relative_to(PACKAGE).with_suffix("").parts)))
    upward = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if _component(target) != own and LAYER[_component(target)] > LAYER[own]
    ]
    assert upward == [], f"{path.relative_to(PACKAGE)} imports from a layer above its own ({own})"


def test_the_scan_finds_imports_anywhere_in_a_module(tmp_path):
    """The scan itself: imports under TYPE_CHECKING, in a function, and of the package itself."""
    root = tmp_path / "aisix_flask"
    (root / "config").mkdir(parents=True)
    module = root / "config" / "x.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..policy.pii import D\n"
        "def f():\n    from .. import gateway\n    from . import aliases\n"
    )
    assert _imports(module, root) == [
        (3, "aisix_flask.policy.pii"),
        (5, "aisix_flask.gateway"),
        (6, "aisix_flask.config.aliases"),
    ]
