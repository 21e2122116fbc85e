"""What every answer carries and what is logged of it: the request id, the JSON access log."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from .gateway import current

access_log = logging.getLogger("aisix_flask.access")

REQUEST_ID_HEADER = "x-aisix-request-id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id() -> str:
    """This request's id: a safe incoming ``x-request-id``, else a new one."""
    rid = g.get("request_id")
    if rid is None:
        incoming = request.headers.get("x-request-id", "")
        rid = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_id = rid
    return rid


def _start_clock() -> None:
    g.started = time.perf_counter()


def _add_request_id(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = request_id()
    return response


# What the access log takes from a call's usage row: names, numbers, never text or secrets.
_ACCESS_FIELDS = (
    "api_key", "model", "upstream_model", "error_code", "upstream_latency_ms", "input_tokens",
    "output_tokens", "total_tokens", "images", "cost_usd", "pii_masked", "idempotent_replay",
)  # fmt: skip


def entry(status: int, latency_ms: float) -> dict[str, Any]:
    """This request's access log line, without a usage row (a call adds its own and logs it)."""
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": request_id(),
        "method": request.method,
        "path": request.path,
        "status": status,
        "latency_ms": round(latency_ms, 2),
        "client_ip": request.remote_addr,
    }


def log_call(line: dict[str, Any], row: Any) -> None:
    """Log a proxied call's line, with what its usage row says; it may end long after its
    request (a stream), so ``line`` was made while the request was there."""
    line.update({name: getattr(row, name) for name in _ACCESS_FIELDS})
    access_log.info(json.dumps(line))


def logs_itself() -> None:
    """This request is a proxied call that logs its own line when it ends."""
    g.aisix_call_logs = True


def _log_access(response: Response) -> Response:
    """One JSON line per request (``gateway.access_log``, on by default), unless a call logs it."""
    if g.get("aisix_call_logs") or not _enabled():
        return response
    started = g.get("started", time.perf_counter())
    access_log.info(json.dumps(entry(response.status_code, (time.perf_counter() - started) * 1000)))
    return response


def _enabled() -> bool:
    config = current()._config
    return config is None or config.settings.access_log


def _init_access_log() -> None:
    """JSON lines on stderr (gunicorn's error stream), not mixed into the app's own log format."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def init_app(app: Flask) -> None:
    """Give every answer its request id, and log one JSON line per request."""
    _init_access_log()
    app.before_request(_start_clock)
    app.after_request(_add_request_id)
    app.after_request(_log_access)
