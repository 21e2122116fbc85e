"""How a stream that did not end cleanly ends: the status its usage row keeps (the caller got 200),
and the last event that tells the caller why, in the caller's API (docs/contract.md, "Streaming")."""

from __future__ import annotations

import json
from typing import Any

from ..errors import GatewayError, anthropic_envelope
from .stream_cuts import CallerGone, Interrupted, ShuttingDown, Silent, StreamCutShort

# How a stream that did not end cleanly is recorded: the status its row keeps (the caller got 200).
ROW_STATUS = {Interrupted: 502, Silent: 504, CallerGone: 499, ShuttingDown: 503}
_ERROR_TYPE = {
    Interrupted: "upstream_error",
    Silent: "timeout",
    ShuttingDown: "server_error",
    CallerGone: "invalid_request_error",
}
_MESSAGES = {
    Interrupted: "The upstream stopped before the end of the stream; the answer is incomplete.",
    Silent: "The upstream sent nothing for longer than the model's timeout; the stream was ended.",
    ShuttingDown: "The gateway is restarting; the stream was ended before it was complete. Retry.",
    CallerGone: "The caller's connection closed (or stopped reading); the stream was ended.",
}


class UpstreamErrorEvent(StreamCutShort):
    """The upstream ended the stream with an error event of its own (relayed as it is)."""

    def __init__(self, error: Any) -> None:
        super().__init__("the upstream sent an error event")
        found = [error.get(k) for k in ("code", "type")] if isinstance(error, dict) else []
        self.code = next((v[:64] for v in found if isinstance(v, str) and v), "upstream_error")


def error_event(failure: StreamCutShort | GatewayError, speaks: str = "openai") -> bytes:
    """The last event of a stream that did not end cleanly: the error envelope as its data (the
    official clients raise on it), in the caller's API (Anthropic's: an ``error`` event)."""
    if isinstance(failure, GatewayError):
        status = failure.code or 500
        error = {"message": failure.description, "type": failure.error_type, "code": failure.error_code}
    else:
        kind = type(failure)
        status = ROW_STATUS.get(kind, 502)
        error = {
            "message": _MESSAGES.get(kind, str(failure)),
            "type": _ERROR_TYPE.get(kind, "upstream_error"),
            "code": failure.code,
        }
    if speaks == "anthropic":
        data = json.dumps(anthropic_envelope(status, str(error["message"])))
        return b"event: error\ndata: " + data.encode() + b"\n\n"
    if speaks == "responses":  # the Responses API's error event: its fields at the top
        data = json.dumps({"type": "error", **error, "param": None})
        return b"event: error\ndata: " + data.encode() + b"\n\n"
    return b"data: " + json.dumps({"error": {**error, "param": None}}).encode() + b"\n\n"
