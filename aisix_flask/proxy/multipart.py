"""A multipart/form-data request (image edits), read once and sent on with bounded memory.

Each part is kept as it arrived: its headers (name, filename, content type, any other) and its bytes,
in a spooled temporary file (in memory up to ``SPOOL_BYTES``, on disk beyond), so that sixteen 4 MB
images are neither held in memory nor copied whole on the way. Sending reads the parts back in
their order, with only the values the gateway changed (``model``, a masked ``prompt``) replaced;
the boundary is new. docs/contract.md, image edits.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from flask import request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ..errors import InvalidRequest, RequestTooLarge

SPOOL_BYTES = 1024 * 1024
READ_BYTES = 64 * 1024
MAX_PARTS = 1000
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() takes "²", which int() refuses
# Form fields the routes read as numbers or booleans: multipart carries every value as text.
INTEGERS = frozenset({"n", "partial_images", "output_compression"})
BOOLEANS = frozenset({"stream"})
# Form fields the routes take as files: a part of one of these names sent without a filename is
# not read as text (its bytes may well be the image).
FILE_FIELDS = frozenset({"image", "image[]", "mask"})


class NotAFile:
    """What a file field holds when its part came without a filename."""

    def __repr__(self) -> str:
        return "NotAFile()"


def not_a_file(name: str) -> str:
    """The one message for a file field sent as a plain field, whatever its bytes."""
    return f"Must be a file: send it as a part with a filename (curl: -F '{name}=@photo.png')."


class InvalidMultipart(InvalidRequest):
    error_code = "invalid_multipart"
    message = "The request body is not valid multipart/form-data."


@dataclass
class Part:
    """One part: its headers as received, where its bytes are, and their digest."""

    name: str
    filename: str | None
    headers: Headers
    body: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(SPOOL_BYTES))
    size: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        self.body.write(data)
        self.size += len(data)
        self.sha256.update(data)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def read(self) -> bytes:
        """The whole part (for the small text fields only)."""
        self.body.seek(0)
        return self.body.read()


@dataclass(frozen=True)
class FilePart:
    """What validation and the ledger see of an uploaded file: never its bytes."""

    name: str
    filename: str
    content_type: str | None
    size: int


class Form:
    """A parsed multipart body: its parts in order."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self._fields: dict[str, Any] | None = None

    @property
    def digest(self) -> str:
        """What makes two forms the same request: each part's name, filename, content type and
        bytes, in order; not the boundary, which clients choose anew for every send (a retry too)."""
        digest = hashlib.sha256()
        for part in self.parts:
            for value in (part.name, part.filename or "", part.content_type or "", part.sha256.hexdigest()):
                digest.update(value.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()

    def fields(self) -> dict[str, Any]:
        """The request as the route checks it: text fields as values (``n`` and ``stream`` as the
        number and boolean they spell), files as FileParts, a name sent several times as a list."""
        if self._fields is None:
            values: dict[str, list[Any]] = {}
            for part in self.parts:
                if part.filename is not None:
                    value: Any = FilePart(part.name, part.filename, part.content_type, part.size)
                elif part.name in FILE_FIELDS:
                    value = NotAFile()
                else:
                    value = _typed(part.name, _text(part))
                values.setdefault(part.name, []).append(value)
            self._fields = {name: v[0] if len(v) == 1 else v for name, v in values.items()}
        return self._fields

    def encode(self, replace: dict[str, str]) -> tuple[Upload, str]:
        """The body to send, with the text of the named fields replaced, and its Content-Type."""
        boundary = f"aisix-{uuid.uuid4().hex}".encode()
        pieces: list[bytes | Part] = []
        for part in self.parts:
            head = b"--" + boundary + b"\r\n"
            head += b"".join(f"{name}: {value}\r\n".encode() for name, value in part.headers.items())
            pieces.append(head + b"\r\n")
            if part.filename is None and part.name in replace:
                pieces.append(replace[part.name].encode())
            else:
                pieces.append(part)
            pieces.append(b"\r\n")
        pieces.append(b"--" + boundary + b"--\r\n")
        return Upload(pieces), f"multipart/form-data; boundary={boundary.decode()}"

    def close(self) -> None:
        """Drop the spooled parts (their temporary files)."""
        for part in self.parts:
            part.body.close()


def read_form(limit: int) -> Form:
    """This request's multipart body, read in bounded pieces: 413 past ``limit``, 400 when it is
    not valid multipart/form-data."""
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        raise InvalidMultipart("The multipart/form-data body has no boundary in its Content-Type.")
    request.max_content_length = limit
    # A part costs a spooled file and some bookkeeping: many tiny ones in an allowed body would
    # cost far more than their bytes (Werkzeug's own form parser stops at 1,000 too).
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=MAX_PARTS)
    form = Form([])
    try:
        stream = request.stream
        while True:
            chunk = stream.read(READ_BYTES)
            decoder.receive_data(chunk or None)
            if _decode(decoder, form.parts) or not chunk:
                break
    except RequestEntityTooLarge:
        form.close()
        too_many = len(form.parts) >= MAX_PARTS
        raise RequestTooLarge(
            f"The form has more than {MAX_PARTS} parts."
            if too_many
            else f"The request body is larger than the gateway's limit of {limit} bytes."
        ) from None
    except ValueError:
        form.close()
        raise InvalidMultipart() from None
    except BaseException:  # a part without a name, a caller that hung up mid-body, a stopping worker
        form.close()
        raise
    return form


def _decode(decoder: MultipartDecoder, parts: list[Part]) -> bool:
    """Take every event the decoder has; True once the closing boundary was read."""
    while not isinstance(event := decoder.next_event(), NeedData):
        if isinstance(event, File | Field):
            if event.name is None:
                raise InvalidMultipart(
                    'Every part needs a name: Content-Disposition: form-data; name="..." (a file part '
                    'also a filename="...").'
                )
            parts.append(Part(event.name, getattr(event, "filename", None), event.headers))
        elif isinstance(event, Data):
            parts[-1].write(event.data)
        elif isinstance(event, Epilogue):
            return True
    return False


def _text(part: Part) -> str:
    try:
        return part.read().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"The form field '{part.name}' is not UTF-8 text.", param=part.name) from None


def _typed(name: str, text: str) -> Any:
    if name in INTEGERS and _INTEGER.fullmatch(text.strip()):
        try:
            return int(text)
        except ValueError:  # more digits than int() reads: no field takes such a number anyway
            return text
    if name in BOOLEANS and text in ("true", "false"):
        return text == "true"
    return text


class Upload:
    """The body sent upstream: bytes and spooled parts read back in turn. Its length is known, so
    it goes with a Content-Length, not chunked."""

    def __init__(self, pieces: list[bytes | Part]) -> None:
        self._pieces = pieces
        self._length = sum(p.size if isinstance(p, Part) else len(p) for p in pieces)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, Part):
                piece.body.seek(0)
                while chunk := piece.body.read(READ_BYTES):
                    yield chunk
            else:
                yield piece
