"""What differs between the OpenAI routes the gateway forwards: one ``Operation`` per route.

Everything else (the request path, the upstream call, the bookkeeping) is shared: see
``pipeline.handle`` and docs/contract.md, "Every proxied route".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, ValidationError, fields

from ..errors import InvalidRequest, MissingParameter
from ..usage.row import UsageRow, whole_number


@dataclass(frozen=True)
class Texts:
    """Where a route's guardrails read text in a body, and how masked text is put back."""

    read: Callable[[dict[str, Any]], list[str]]
    # The body with the texts replaced, in the order ``read`` gave them (never changes the input).
    write: Callable[[dict[str, Any], list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Streaming:
    """How a route streams (``stream: true``): what it asks the upstream for, what its events say."""

    # The body to send, and whether the usage-only events in the answer are the gateway's own
    # request (chat's stream_options.include_usage), not to be relayed.
    prepare: Callable[[dict[str, Any]], tuple[dict[str, Any], bool]]
    note_event: Callable[[UsageRow, dict[str, Any]], None]  # usage (and images) from an event
    # The event (given its data and its JSON) that makes the stream complete. With ``last``, it is
    # the stream's last (chat's [DONE]): relaying stops there. Otherwise the stream is complete when
    # the upstream's body ends after at least one (an image stream's ``*.completed`` events).
    is_final: Callable[[str, Any], bool]
    last: bool = True
    is_usage_only: Callable[[dict[str, Any]], bool] = lambda event: False
    text: Callable[[dict[str, Any]], list[tuple[int, str]]] | None = None  # new answer text by choice


@dataclass(frozen=True)
class Operation:
    """One proxied route: its schema, its text, its provider rule, its upstream and its usage."""

    name: str  # the adapter capability: "images", "chat", "embeddings", "rerank"
    route: str  # "/v1/chat/completions"
    upstream_path: str  # "/chat/completions"
    what: str  # how messages name it: "chat completions"
    schema: Schema  # the fields the gateway checks; unknown ones pass through
    texts: Texts  # what input guardrails read
    note_answer: Callable[[UsageRow, dict[str, Any]], None]  # usage (and images) from an answer
    providers: frozenset[str] | None = None  # images: {"openai"}; None: any provider
    output_text: Callable[[dict[str, Any]], list[str]] | None = None  # what output guardrails read
    streaming: Streaming | None = None  # None: ``stream: true`` is forwarded as any field
    form_schema: Schema | None = None  # the route also takes multipart/form-data, checked by this


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


class JsonObject(fields.Field):
    """A JSON object, kept as sent."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError("Not a valid object.")
        return value


class JsonArray(fields.Field):
    """A JSON array, kept as sent."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise ValidationError("Not a valid array.")
        return value


class OneOfTypes(fields.Field):
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
