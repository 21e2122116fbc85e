"""POST /v1/rerank: Jina/Cohere/vLLM-style rerank through an OpenAI-compatible adapter."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from marshmallow import INCLUDE, Schema, fields
from marshmallow.validate import Length, Range

from ..jsonvalues import whole_number
from ..proxy.operation import Operation, Texts
from ..proxy.pipeline import handle
from ..proxy.schema import OneOfTypes, StrictBool, StrictInt
from ..usage.row import UsageRow

bp = Blueprint("rerank", __name__)


def _documents(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(d, str | dict) for d in value)


class RerankSchema(Schema):
    """Checks the fields the gateway knows; anything else is kept and forwarded as sent."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True, validate=Length(min=1))
    query = fields.String(required=True)
    documents = OneOfTypes((_documents, "a non-empty array of strings or objects"), required=True)
    top_n = StrictInt(allow_none=True, validate=Range(min=1))
    return_documents = StrictBool(allow_none=True)


def _document_text(document: Any) -> str | None:
    if isinstance(document, str):
        return document
    text = document.get("text")
    return text if isinstance(text, str) else None


def read_texts(body: dict[str, Any]) -> list[str]:
    """The query, then every document's text (a string, or an object's ``text``)."""
    return [body["query"], *(t for d in body["documents"] if (t := _document_text(d)) is not None)]


def write_texts(body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """The body with the query and the documents' texts replaced, in the same order."""
    replacements = iter(texts[1:])
    documents = []
    for document in body["documents"]:
        if isinstance(document, str):
            document = next(replacements)
        elif _document_text(document) is not None:
            document = {**document, "text": next(replacements)}
        documents.append(document)
    return {**body, "query": texts[0], "documents": documents}


def note_usage(row: UsageRow, document: dict[str, Any]) -> None:
    """A rerank answer's usage: OpenAI-style ``usage`` (Jina, vLLM), else Cohere's
    ``meta.billed_units`` (tokens and search units). Rerank reads input: a bare total is input."""
    usage, meta = document.get("usage"), document.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    if isinstance(usage, dict):
        row.note_usage(usage)
        if not (row.input_tokens or row.output_tokens):
            row.input_tokens = row.total_tokens
    elif isinstance(billed, dict):
        row.note_usage(
            {"input_tokens": billed.get("input_tokens"), "output_tokens": billed.get("output_tokens")}
        )
        if "search_units" in billed:
            row.search_units = max(whole_number(billed.get("search_units")) or 0, 0)


RERANK = Operation(
    capability="rerank",
    route="/v1/rerank",
    upstream_path="/rerank",
    what="rerank",
    schema=RerankSchema(),
    texts=Texts(read=read_texts, write=write_texts),
    note_answer=note_usage,
    token_kinds=(("input",),),
    search_units=True,
)


@bp.post(RERANK.route)
def rerank() -> Response:
    """Rerank documents through the alias's upstream, checking the caller and policy first."""
    return handle(RERANK)
