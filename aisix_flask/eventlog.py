"""Event lines for operators: one JSON object per line on stderr, in the access log's form.

The access log says what each request did; these lines say what happened to the gateway itself
(a store that stopped answering, and when it answered again). They are written whatever
``gateway.access_log`` says.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

event_log = logging.getLogger("aisix_flask.events")


def iso(seconds: float | None = None) -> str:
    """A time (``time.time()``, default now) as the access log writes it: UTC, milliseconds, ``Z``."""
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def emit(event: str, level: int = logging.WARNING, **fields: Any) -> None:
    """Write one event line: its time, its name, and ``fields`` (names and numbers, no secrets)."""
    event_log.log(level, json.dumps({"time": iso(), "event": event, **fields}))


def json_lines(logger: logging.Logger) -> None:
    """Send ``logger``'s records to stderr (gunicorn's error stream) as they are, one JSON object a
    line, not in the app's own log format: the access log and the event lines."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
