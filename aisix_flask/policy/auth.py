"""Caller key → ApiKey: header parsing, hash comparison in constant time, disabled and expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime

from werkzeug.datastructures import Headers

from ..config.resources import ApiKey
from ..errors import ApiKeyDisabled, ApiKeyExpired, InvalidApiKey


def presented_key(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer …`` (any case) or ``x-api-key``; failing both, the
    password of HTTP Basic (what a browser sends for the usage page; the user name is ignored)."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = (headers.get("x-api-key") or "").strip()
    if api_key:
        return api_key
    if scheme.lower() == "basic" and token.strip():
        try:
            password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


def authenticate(keys: Iterable[ApiKey], headers: Headers) -> ApiKey:
    """Find the key the request presents, or raise the 401 that says why not."""
    secret = presented_key(headers)
    if secret is None:
        raise InvalidApiKey(
            "Missing API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        )
    digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
    found = None
    # Every configured hash is compared, with no early exit, so the time taken
    # does not depend on which key (if any) matched or where it sits in the file.
    for key in keys:
        if key.key_hash is not None and hmac.compare_digest(key.key_hash, digest):
            found = key
    if found is None:
        raise InvalidApiKey()
    if found.disabled:
        raise ApiKeyDisabled()
    if found.expires_at is not None and datetime.now(UTC) >= found.expires_at:
        raise ApiKeyExpired()
    return found
