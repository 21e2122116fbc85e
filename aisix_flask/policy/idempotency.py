"""Idempotency-Key: the first request with a key is forwarded and its answer kept; a repeat
gets that answer back without a second (billed) generation."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Response
from werkzeug.datastructures import Headers

from ..config.resources import IdempotencySettings
from ..errors import (
    GatewayError,
    IdempotencyAnswerNotStored,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
)
from ..stores import STORE_ERRORS
from ..stores.health import StoreHealth
from ..stores.idempotency import IdempotencyStore, Record
from ..usage.row import UsageRow

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAY_HEADER = "x-aisix-idempotent-replay"
KEPT_HEADERS = ("Retry-After", "x-should-retry")
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class Idempotency:
    """Runs a request once per (caller key, Idempotency-Key) in the rate-limit store."""

    def __init__(self, store: IdempotencyStore, health: StoreHealth) -> None:
        self.store = store
        self.health = health

    def run(
        self,
        headers: Headers,
        api_key: str,
        body: dict[str, Any],
        row: UsageRow,
        produce: Callable[[], Response],
        settings: IdempotencySettings,
        running_s: float,
        digest: str | None = None,
    ) -> Response:
        """``produce()`` the answer, or replay the one a request with the same key produced."""
        raw = headers.get(HEADER)
        if raw is None:
            return produce()
        if not _VALID_KEY.fullmatch(raw):
            raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters.", param=HEADER)
        key = hashlib.sha256(f"{api_key}\0{raw}".encode()).hexdigest()
        # What makes two requests the same: the JSON body, or (a form) the bytes it was sent as.
        digest = (
            digest
            or hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        )
        try:
            held = self._claim(key, digest, running_s, settings)
        except STORE_ERRORS as e:
            # Without the store the promise cannot be kept; refusing is safer than billing twice.
            self.health.failed("idempotency: requests with an Idempotency-Key refused (503)", e)
            raise ServiceUnavailable(
                "The gateway cannot check this Idempotency-Key right now; retry shortly.",
                error_code="idempotency_unavailable",
                should_retry=True,
            ) from None
        self.health.answered()
        if held is not None:
            row.note_replay(held.status or 0, _error_code(held))
            return _replay(held)
        try:
            response = produce()
        except GatewayError as e:
            if e.generated or (isinstance(e, UpstreamError) and not e.should_retry):
                # The upstream may have generated: the error is the answer to keep.
                self._quietly(self.store.finish, key, _record(digest, e.get_response(), settings))
            else:  # refused before anything reached the upstream: a retry may really run
                self._quietly(self.store.release, key)
            raise
        except BaseException:
            self._quietly(self.store.release, key)  # refused before sending: free the key
            raise
        self._quietly(self.store.finish, key, _record(digest, response, settings))
        return response

    def _quietly(self, action: Callable[..., None], *args: Any) -> None:
        """Update the store; a failure is logged, never put between the caller and its answer
        (the key then stays claimed until its request's timeout has passed)."""
        try:
            action(*args)
        except STORE_ERRORS as e:
            self.health.failed("idempotency: answers not kept (keys stay claimed for a while)", e)
        else:
            self.health.answered()

    def _claim(self, key: str, digest: str, running_s: float, settings: IdempotencySettings) -> Record | None:
        """None when this request owns the key; else the finished record (waiting, bounded)."""
        deadline = time.monotonic() + settings.wait_s
        while True:
            held = self.store.claim(key, digest, running_s, settings.ttl_s)
            if held is None:
                return None
            if held.body_hash != digest:
                raise IdempotencyKeyReused()
            if held.state != "running":
                return held
            if time.monotonic() >= deadline:
                raise IdempotencyInProgress(headers={"Retry-After": "5"})
            time.sleep(0.1)


def _record(digest: str, response: Response, settings: IdempotencySettings) -> Record:
    body = response.get_data()
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    if len(body) > settings.max_answer_bytes:
        return Record(digest, "too_large", response.status_code, response.content_type, headers, None)
    return Record(digest, "done", response.status_code, response.content_type, headers, body)


def _error_code(held: Record) -> str | None:
    """The kept answer's ``error.code``, for the replay's row."""
    if not held.status or held.status < 400 or not held.body:
        return None
    try:
        error = json.loads(held.body).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:64] if isinstance(code, str) else None


def _replay(held: Record) -> Response:
    if held.state == "too_large":
        error = IdempotencyAnswerNotStored(
            "The first request with this Idempotency-Key finished, but its answer was larger than "
            "the gateway keeps (gateway.idempotency.max_answer_bytes), so it cannot be replayed; "
            "it is not sent upstream again. Use a new key to generate again."
        )
        raise error
    response = Response(held.body, status=held.status, content_type=held.content_type)
    response.headers.update(held.headers)
    response.headers[REPLAY_HEADER] = "true"
    return response
