"""POST /v1/embeddings: a string, strings, token ids or arrays of token ids, through any provider."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, OneOf, Range

from ..jsonvalues import whole_number
from ..proxy.operation import Operation, Texts
from ..proxy.pipeline import handle
from ..proxy.schema import OneOfTypes, StrictInt
from ..usage.row import UsageRow


def _token(value: Any) -> bool:
    return whole_number(value) is not None  # 2.0 is an integer, as for every integer field


def _tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_token(t) for t in value)


INPUT_SHAPES = (
    (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    (lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v), "an array of strings"),
    (_tokens, "an array of token ids"),
    (lambda v: isinstance(v, list) and bool(v) and all(_tokens(t) for t in v), "an array of token id arrays"),
)

bp = Blueprint("embeddings", __name__)


class EmbeddingSchema(Schema):
    """Checks the fields the gateway knows; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    input = OneOfTypes(*INPUT_SHAPES, required=True)
    encoding_format = fields.String(allow_none=True, validate=OneOf(["float", "base64"]))
    dimensions = StrictInt(allow_none=True, validate=Range(min=1))
    user = fields.String(allow_none=True)


def read_input(body: dict[str, Any]) -> list[str]:
    """The strings to embed (token ids are not text)."""
    value = body["input"]
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str)]


def write_input(body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """The body with its strings replaced, in the same shape."""
    return {**body, "input": texts[0] if isinstance(body["input"], str) else texts}


EMBEDDINGS = Operation(
    capability="embeddings",
    route="/v1/embeddings",
    upstream_path="/embeddings",
    what="embeddings",
    schema=EmbeddingSchema(),
    texts=Texts(read=read_input, write=write_input),
    note_answer=UsageRow.note_answer_usage,
    token_kinds=(("input",),),
)


@bp.post(EMBEDDINGS.route)
def embeddings() -> Response:
    """Embeddings through the alias's upstream, checking the caller and policy first."""
    return handle(EMBEDDINGS)
