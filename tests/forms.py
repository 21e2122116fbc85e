"""multipart/form-data bodies written byte for byte, for the image edits route: its own tests
(tests/test_image_edits.py) and the generated bad input (tests/test_abuse.py)."""

from __future__ import annotations

from .conftest import auth


def raw_form(*parts: bytes, boundary: str = "XyZ-boundary") -> tuple[bytes, dict[str, str]]:
    """A multipart body exactly as written: each part is its header lines, a blank line, its data."""
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, {**auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"}


def field(name: str, value: str | bytes) -> bytes:
    """A text part; ``value`` as bytes when it must be sent as it is (not UTF-8, say)."""
    data = value if isinstance(value, bytes) else value.encode()
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data


def file(name: str, filename: str, data: bytes, content_type: str = "image/png") -> bytes:
    """A file part: a filename, a Content-Type and its bytes."""
    disposition = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'
    head = f"{disposition}\r\nContent-Type: {content_type}"
    return head.encode() + b"\r\n\r\n" + data
