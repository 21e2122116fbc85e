"""What a request to the gateway carries while it is handled: its id, when it started, the config
it runs under and the proxied call it runs (the app's ``request_class``)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from functools import cached_property
from typing import Any, Protocol, cast

from flask import Request, request

from .config import Config
from .usage.row import UsageRow

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class Finishing(Protocol):
    """A proxied call, as the end of its request sees it (``proxy.call.Call``)."""

    def when_finished(self, callback: Callable[[int, UsageRow], None]) -> None:
        """Call ``callback(status_sent, row)`` when the call has finished (now, if it has)."""


class GatewayRequest(Request):
    """A request to the gateway, and what its handling shares: its id, when it started, the
    config it runs under (``Gateway.config``) and the proxied call it runs, if any (the access
    log writes a call's line when the call ends: ``follow_call``)."""

    config: Config | None = None
    call: Finishing | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self.arrived = time.time()  # what the access log's ``time`` says

    @cached_property
    def request_id(self) -> str:
        """A safe incoming ``x-request-id``, else a new one."""
        incoming = self.headers.get("x-request-id", "")
        return incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def this_request() -> GatewayRequest:
    """The request being handled (the app's ``request_class`` is ``GatewayRequest``)."""
    return cast(GatewayRequest, request._get_current_object())  # type: ignore[attr-defined]


def request_id() -> str:
    """This request's id (what ``x-aisix-request-id`` says, and the upstream is told)."""
    return this_request().request_id


def follow_call(call: Finishing) -> None:
    """This request runs ``call``: its access log line is written when the call ends."""
    this_request().call = call
