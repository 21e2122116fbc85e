"""POST /v1/images/edits: OpenAI's image edits, multipart (image files) or JSON (image references)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import ValidationError, validates_schema
from marshmallow.validate import Length

from ..proxy.multipart import FilePart, not_a_file
from ..proxy.operation import Operation
from ..proxy.pipeline import handle
from ..proxy.schema import MISSING, JsonArray, JsonObject
from ..usage.row import UsageRow
from .images import PROMPT, STREAMING, ImageSchema

bp = Blueprint("image_edits", __name__)

MAX_IMAGES = 16


class ImageEditFormSchema(ImageSchema):
    """multipart/form-data: 1 to 16 files in ``image`` or ``image[]`` (the official Python client
    sends ``image[]``), an optional ``mask`` file; every other part is kept and sent on as it came."""

    @validates_schema
    def _files(self, data: dict[str, Any], **kwargs: Any) -> None:
        images = []
        for name in ("image", "image[]"):
            value = data.get(name)
            for item in value if isinstance(value, list) else [] if value is None else [value]:
                if not isinstance(item, FilePart):
                    raise ValidationError(not_a_file(name), name)
                if item.filename or item.size:  # what a browser sends for "no file chosen" is not
                    images.append(item)
        if not images:
            sent_empty = "image" in data or "image[]" in data
            raise ValidationError("The file is empty: no image was sent." if sent_empty else MISSING, "image")
        if len(images) > MAX_IMAGES:
            raise ValidationError(f"At most {MAX_IMAGES} images, {len(images)} were sent.", "image")
        if "mask" in data and not isinstance(data["mask"], FilePart):
            raise ValidationError(not_a_file("mask"), "mask")


def _reference(value: Any) -> bool:
    return isinstance(value, dict) and any(
        isinstance(value.get(k), str) and value[k] for k in ("image_url", "file_id")
    )


class ImageEditJsonSchema(ImageSchema):
    """JSON: ``images`` as references, ``[{"image_url": ...} | {"file_id": ...}]``, 1 to 16."""

    images = JsonArray(required=True, validate=Length(min=1, max=MAX_IMAGES))
    mask = JsonObject(allow_none=True)

    @validates_schema
    def _references(self, data: dict[str, Any], **kwargs: Any) -> None:
        for i, image in enumerate(data.get("images") or []):
            if not _reference(image):
                raise ValidationError(
                    f"item {i}: must be an object with an image_url or a file_id.", "images"
                )
        if data.get("mask") is not None and not _reference(data["mask"]):
            raise ValidationError("Must be an object with an image_url or a file_id.", "mask")


EDITS = Operation(
    capability="images",
    route="/v1/images/edits",
    upstream_path="/images/edits",
    what="image edits",
    schema=ImageEditJsonSchema(),
    form_schema=ImageEditFormSchema(),
    texts=PROMPT,
    note_answer=UsageRow.note_image_answer,
    providers=frozenset({"openai"}),
    streaming=STREAMING,
    token_kinds=(("input", "output"), ("input_text", "input_image", "output_image")),
)


@bp.post(EDITS.route)
def edit() -> Response:
    """Edit images through the alias's upstream, checking the caller and policy first."""
    return handle(EDITS)
