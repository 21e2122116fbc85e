"""POST /v1/images/generations: OpenAI's image generation, for models whose provider is OpenAI."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, OneOf, Range

from ..proxy.operation import Operation, Streaming, Texts
from ..proxy.pipeline import handle
from ..proxy.schema import StrictBool, StrictInt
from ..usage.row import UsageRow

bp = Blueprint("images", __name__)


class ImageSchema(Schema):
    """What image generations and edits share; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    prompt = fields.String(required=True, validate=Length(min=1))
    n = StrictInt(allow_none=True, validate=Range(min=1, max=10))
    response_format = fields.String(allow_none=True, validate=OneOf(["url", "b64_json"]))
    size = fields.String(allow_none=True)
    quality = fields.String(allow_none=True)
    style = fields.String(allow_none=True)
    user = fields.String(allow_none=True)
    background = fields.String(allow_none=True)
    moderation = fields.String(allow_none=True)
    output_format = fields.String(allow_none=True)
    output_compression = StrictInt(allow_none=True, validate=Range(min=0, max=100))
    partial_images = StrictInt(allow_none=True, validate=Range(min=0, max=3))
    stream = StrictBool(allow_none=True)


def completes(data: str, event: Any) -> bool:
    """A streamed image's last event: ``image_generation.completed`` (``image_edit.completed``)."""
    return isinstance(event, dict) and str(event.get("type", "")).endswith(".completed")


# An image stream: partial images, then a completed event per image with its usage; the stream is
# complete when the upstream's body ends after at least one.
STREAMING = Streaming(
    prepare=lambda body: (body, False),
    note_event=UsageRow.add_image_event,
    is_final=completes,
    last=False,
)

PROMPT = Texts(
    read=lambda body: [body["prompt"]],
    write=lambda body, texts: {**body, "prompt": texts[0]},
)

GENERATIONS = Operation(
    capability="images",
    route="/v1/images/generations",
    upstream_path="/images/generations",
    what="image generation",
    schema=ImageSchema(),
    texts=PROMPT,
    note_answer=UsageRow.note_image_answer,
    providers=frozenset({"openai"}),
    streaming=STREAMING,
    token_kinds=(("input", "output"), ("input_text", "output_image")),
)


@bp.post(GENERATIONS.route)
def generate() -> Response:
    """Generate images through the alias's upstream, checking the caller and policy first."""
    return handle(GENERATIONS)
