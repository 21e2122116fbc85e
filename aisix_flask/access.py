"""What every answer carries and what is logged of it: the request id, the JSON access log."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response

from .eventlog import event_log, iso, json_lines
from .gateway import current
from .incoming import GatewayRequest, this_request
from .usage.row import UsageRow

access_log = logging.getLogger("aisix_flask.access")

REQUEST_ID_HEADER = "x-aisix-request-id"


def _add_request_id(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = this_request().request_id
    return response


# What the access log takes from a call's usage row: names, numbers, never text or secrets.
_ACCESS_FIELDS = (
    "api_key", "model", "upstream_model", "error_code", "upstream_latency_ms", "input_tokens",
    "output_tokens", "total_tokens", "images", "cost_usd", "pii_masked", "idempotent_replay",
)  # fmt: skip


def entry(handled: GatewayRequest, status: int) -> dict[str, Any]:
    """A request's access log line, as far as the request itself tells (a call adds its row)."""
    return {
        "time": iso(handled.arrived),  # when the request arrived
        "request_id": handled.request_id,
        "method": handled.method,
        "path": handled.path,
        "status": status,
        "latency_ms": round((time.perf_counter() - handled.started) * 1000, 2),
        "client_ip": handled.remote_addr,
    }


def _log_access(response: Response) -> Response:
    """Write this request's JSON line (``gateway.access_log``, on by default): now, or, for a
    proxied call, when the call ends (a stream: after its last event), with what its usage row
    says. This is the only place an access line is written."""
    config = current().request_config()
    if config is not None and not config.settings.access_log:
        return response
    handled = this_request()
    line = entry(handled, response.status_code)
    if handled.call is None:
        access_log.info(json.dumps(line))
    else:
        handled.call.when_finished(lambda status, row: _log_call(line, status, row))
    return response


def _log_call(line: dict[str, Any], status_sent: int, row: UsageRow) -> None:
    """A call's line, with the status the caller got and what the call's row says (the call may
    end long after its request, a stream: ``line`` was made while the request was there)."""
    line.update(status=status_sent, latency_ms=round(row.latency_ms or 0.0, 2))
    line.update({name: getattr(row, name) for name in _ACCESS_FIELDS})
    if row.upstream_latency_ms is not None:  # as precise as latency_ms, not to the nanosecond
        line["upstream_latency_ms"] = round(row.upstream_latency_ms, 2)
    access_log.info(json.dumps(line))


def init_app(app: Flask) -> None:
    """Give every answer its request id, log one JSON line per request, and write the gateway's
    event lines in the same form."""
    json_lines(access_log)
    json_lines(event_log)
    app.after_request(_add_request_id)
    app.after_request(_log_access)
