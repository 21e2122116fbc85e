"""One proxied request, from its caller key to its usage row.

A ``Call`` holds what the request holds while it runs (its route, its concurrency slots) and owes
what it owes at its end: the usage row, the metrics, the tokens counted against the limits, the
slots given back, the access log line. A plain answer ends when the view returns; a stream ends when
its last event is sent or its caller goes away, and the call finishes then (docs/contract.md).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from flask import request

from .. import access, metrics
from ..config import Config
from ..config.aliases import Route
from ..config.resources import ApiKey
from ..errors import GatewayError
from ..gateway import Gateway
from ..policy.budgets import Reservation
from ..policy.limits import Admission, Scope
from ..usage.row import UsageRow
from .multipart import Form
from .operation import Operation
from .upstream import Timeout

log = logging.getLogger(__name__)


class Call:
    """A proxied request's state and its end; use as ``with Call(...) as call:``."""

    def __init__(self, operation: Operation, gateway: Gateway, config: Config, key: ApiKey) -> None:
        self.operation = operation
        self.gateway = gateway
        self.config = config  # this request's config, start to finish
        self.key = key
        self.row = UsageRow(access.request_id(), key.display_name, operation.route, request.remote_addr)
        self.route: Route | None = None
        self.timeout: Timeout | None = None
        self.admission = Admission()
        self.slot_lease: tuple[float, float] | None = None  # a stream's: (leased at, for seconds)
        self.reservation = Reservation()
        self.price_before: float | None = None  # what it costs, where known before the call
        self.priced = False  # the upstream answered 2xx: what it reported has a cost
        self.upstream_started: float | None = None
        self.outcome_unknown = False  # sent, and no answer says what the upstream made of it
        self.upload: Form | None = None  # a multipart body's parts, spooled
        self.streaming = False  # a stream took over the end of the call
        self._started = time.perf_counter()
        # Taken now: a stream finishes after the request context is gone.
        self._line = access.entry(0, 0.0) if config.settings.access_log else None
        self._finished = False
        access.logs_itself()

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(error, GatewayError):
            self.row.status, self.row.error_code = error.code, error.error_code
            error.extra_headers = {**self.rate_limit_headers(), **error.extra_headers}
        elif error is not None:
            self.row.status, self.row.error_code = 500, "internal_error"
        if error is not None or not self.streaming:
            self.finish(self.row.status)

    def rate_limit_headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers of this call's answer: as its admission saw the windows, or,
        not admitted, as they are now (for a limited key or model: none otherwise)."""
        if self.admission.headers or self.admission.store_failed:
            return self.admission.headers  # (a store that just failed is not asked again)
        scopes = [Scope("key", self.key.display_name, self.key.rate_limit)]
        if self.route is not None:
            scopes.append(Scope("model", self.route.model.display_name, self.route.model.rate_limit))
        if not any(
            scope.limit.rpm or scope.limit.rpd or scope.limit.tpm or scope.limit.tpd for scope in scopes
        ):
            return {}
        return self.gateway.limiter.headers(scopes)

    def finish(self, status_sent: int) -> None:
        """Record the call, once: count its tokens and give back its slots, price it, queue its
        row, count it in the metrics, log its line. ``status_sent`` is the HTTP status the caller
        got (a stream's is 200 whatever its row says)."""
        if self._finished:
            return
        self._finished = True
        if self.upload is not None:
            self.upload.close()
        row = self.row
        row.latency_ms = (time.perf_counter() - self._started) * 1000
        self.gateway.limiter.finish(self.admission, row.total_tokens)
        model = self.route.model if self.route else None
        if self.priced and model is not None and model.pricing is not None:
            row.cost_usd = model.pricing.cost(row)
        if self.outcome_unknown and self.price_before and (row.cost_usd or 0) < self.price_before:
            # Sent, and no answer says what came of all of it (a timeout, a stream cut after some
            # of its images, a hang-up, a 2xx that cannot be read): the upstream may have made and
            # billed what was asked for, at the price known up front. (A price known only from the
            # answer is not guessed.)
            row.cost_usd = self.price_before
        if self.reservation.charges and self.priced and row.cost_usd is None:
            log.warning(
                "request %s to model %r under a budget could not be priced (the upstream reported "
                "no usage, or usage its pricing has no price for): it counts nothing",
                row.request_id,
                row.model,
            )
        if model is not None:
            self.gateway.budgets.count(
                self.reservation, self.key.display_name, model.display_name, row.cost_usd, row.created_at
            )
        self.gateway.ledger.record(row)
        metrics.observe(row, model.display_name if model else "")
        if self._line is not None:
            self._line.update(status=status_sent, latency_ms=round(row.latency_ms, 2))
            access.log_call(self._line, row)
