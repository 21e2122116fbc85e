"""The field types the routes' schemas share, and the check that names the first bad field.

marshmallow validates, it does not rewrite: these fields accept JSON's own types (2.0 is an
integer, "2" is not) and the body is forwarded as it was sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing

from ..errors import InvalidRequest, MissingParameter
from ..jsonvalues import whole_number


class StrictInt(fields.Integer):
    """An integer as JSON Schema means it: a number with no fraction (2 or 2.0), not "2" or true."""

    def _validated(self, value: Any) -> int:
        if whole_number(value) is None:
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBool(fields.Boolean):
    """true or false, nothing truthy."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictNumber(fields.Float):
    """A JSON number (not a numeric string, not true), kept as sent."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return value


class JsonObject(fields.Field[Any]):
    """A JSON object, kept as sent."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError("Not a valid object.")
        return value


class JsonArray(fields.Field[Any]):
    """A JSON array, kept as sent."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise ValidationError("Not a valid array.")
        return value


class ObjectsOf(fields.Field[Any]):
    """A JSON array of objects, each checked against ``schema``'s fields (with their own messages:
    the errors read as ``List(Nested(schema))``'s) and kept as sent, other keys included.

    One pass over the items, each field's ``deserialize`` called on its value: a schema load per
    item cost about 10 µs, so a conversation of 100 messages took 1.2 ms to validate (0.1 ms this
    way; bench/RESULTS.md, round 6).
    """

    default_error_messages = {"invalid": "Not a valid list."}

    def __init__(self, schema: type[Schema], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        items = schema()
        self.item_fields = items.fields
        self.not_an_object = items.error_messages["type"]

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValidationError({i: {"_schema": [self.not_an_object]}})
            for name, field in self.item_fields.items():
                try:
                    field.deserialize(item.get(name, missing), name, item)
                except ValidationError as e:
                    raise ValidationError({i: {name: e.messages}}) from None
        return value


class OneOfTypes(fields.Field[Any]):
    """A value of one of a few JSON shapes, each given as (test, description); kept as sent."""

    def __init__(self, *shapes: tuple[Callable[[Any], bool], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shapes = shapes

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not any(test(value) for test, _ in self.shapes):
            raise ValidationError(f"Must be {' or '.join(what for _, what in self.shapes)}.")
        return value


def validate(schema: Schema, body: dict[str, Any]) -> None:
    """Raise 400 naming the first bad field (in the schema's order); the body is not rewritten."""
    errors = schema.validate(body)
    if not errors:
        return
    param = next(name for name in (*schema.fields, *errors) if name in errors)
    message = _first_message(errors[param])
    if param not in body and message == MISSING:
        raise MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    raise InvalidRequest(f"Invalid value for '{param}': {message}", param=param)


MISSING = fields.Field.default_error_messages["required"]


def _first_message(messages: Any) -> str:
    """marshmallow's first message, however deep it sits (nested lists and schemas)."""
    while isinstance(messages, dict | list) and messages:
        if isinstance(messages, dict):
            key, messages = next(iter(messages.items()))
            if isinstance(key, int):
                prefix = f"item {key}: "
                return prefix + _first_message(messages)
            if key != "_schema":
                return f"'{key}': " + _first_message(messages)
        else:
            messages = messages[0]
    return str(messages)
