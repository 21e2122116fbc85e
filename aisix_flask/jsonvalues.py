"""Small readings of JSON values that the request schemas and the usage row share."""

from __future__ import annotations

from typing import Any


def whole_number(value: Any) -> int | None:
    """A JSON number with no fraction (2 or 2.0) as an int; None for anything else, bools too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
