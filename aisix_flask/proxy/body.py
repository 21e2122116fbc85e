"""Step 2 of every route: the request body as a JSON object the gateway can forward unchanged.

JSON allows two things that cannot be sent on: a ``\\ud800`` escape (a lone UTF-16 surrogate, which
no UTF-8 text can carry) and a number too large for a double (``1e400`` would become ``Infinity``,
which is not JSON). Both are refused here with a 400 that names the top-level field they sit in,
so no route, now or later, can fail on them while forwarding or recording.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import InvalidJson, InvalidRequest, RequestTooLarge


def read_json_object(limit: int) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type (``curl -d`` sends a form type)."""
    request.max_content_length = limit
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise RequestTooLarge(
            f"The request body is larger than the gateway's limit of {request.max_content_length} bytes."
        ) from None
    return parse_json_object(data)


def parse_json_object(data: bytes) -> dict[str, Any]:
    """``data`` as a JSON object that can be encoded again as UTF-8 JSON, or 400."""
    try:
        # Strictly: json.loads(bytes) would let UTF-8-encoded surrogates through ("surrogatepass").
        text = data.decode(json.detect_encoding(data))
    except (UnicodeDecodeError, LookupError):
        raise InvalidJson("The request body is not valid UTF-8 JSON.") from None
    numbers = _Numbers()
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=numbers.parse)
    except (ValueError, RecursionError):
        raise InvalidJson() from None
    if not isinstance(body, dict):
        raise InvalidJson("The request body must be a JSON object.")
    # Only an escape can make a surrogate once the text decoded strictly; most bodies have none.
    if numbers.out_of_range or "\\ud" in text or "\\uD" in text:
        _refuse_unsendable(body)
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _OutOfRange:
    """A JSON number no double can hold, as the caller wrote it."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Numbers:
    """``parse_float`` for json.loads: a double, or a marker for one out of range."""

    def __init__(self) -> None:
        self.out_of_range = False

    def parse(self, text: str) -> float | _OutOfRange:
        value = float(text)
        if math.isinf(value):
            self.out_of_range = True
            return _OutOfRange(text)
        return value


def _refuse_unsendable(body: dict[str, Any]) -> None:
    """Raise 400 naming the first top-level field that holds a lone surrogate or a huge number."""
    for key, value in body.items():
        param = key.encode("utf-8", "backslashreplace").decode("utf-8")
        if not _encodable(key):
            raise InvalidRequest(f"The field name '{param}' {_SURROGATE}", param=param)
        problem = _first_problem(value)
        if problem is not None:
            raise InvalidRequest(f"Invalid value for '{param}': {problem}", param=param)


_SURROGATE = (
    "holds a lone UTF-16 surrogate escape (such as \\ud800), which is not text: no UTF-8 request "
    "can carry it upstream."
)


def _first_problem(value: Any) -> str | None:
    """What makes ``value`` (at any depth, keys too) impossible to forward, if anything."""
    stack = [value]  # iterative: a body may nest as deep as the JSON parser allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return f"{'it' if item is value else 'a string inside it'} {_SURROGATE}"
        elif isinstance(item, _OutOfRange):
            return f"the number {item.text[:40]} is too large to represent; send a smaller number."
        elif isinstance(item, dict):
            for key in item:
                if not _encodable(key):
                    return f"a field name inside it {_SURROGATE}"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
