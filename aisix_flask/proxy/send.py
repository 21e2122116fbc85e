"""Step 11: one upstream call, the body sent with only ``model`` rewritten (or, through a
translating bridge, as its provider's API has it), and what came of it.

``send`` never raises what the upstream did: it returns an ``Attempt`` that says it (an answer to
pass on, an open event stream, or the error the gateway answers instead), so that whoever sends
decides what a failure means (docs/contract.md, the upstream table).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import requests

from ..config.aliases import Route
from ..config.resources import UpstreamSettings
from ..errors import UpstreamBadResponse, UpstreamError
from ..providers import conversion_for
from . import upstream
from .multipart import Form
from .operation import Operation
from .outcomes import Answer, interpret
from .upstream import Timeout


@dataclass(frozen=True)
class Payload:
    """What a request sends, and to which route: its body (masked text put back) and, for a form,
    the parts it came in."""

    route: Route
    body: dict[str, Any]
    upload: Form | None = None
    alias: str = ""  # the model the caller named (a translated answer names it)
    forwarded: tuple[tuple[str, str], ...] = ()  # the caller's headers for a provider of its API

    def with_body(self, body: dict[str, Any]) -> Payload:
        """The same payload with another body (a stream's, asking for usage)."""
        return dataclasses.replace(self, body=body)

    def encode(self, speaks: str = "openai") -> tuple[Any, str]:
        """What to send and its Content-Type: the body as the key's bridge sends it (OpenAI's: only
        ``model`` rewritten); a form's parts as they came, with the fields the gateway changed
        (``model``, masked text) replaced."""
        model = self.route.upstream_model
        if self.upload is None:
            conversion = conversion_for(self.route.provider_key.adapter, speaks)
            sent = conversion.body(self.body, model, self.route.model)
            return json.dumps(sent, ensure_ascii=False).encode(), "application/json"
        sent = self.upload.fields()
        changed = {
            name: value
            for name, value in self.body.items()
            if isinstance(value, str) and sent.get(name) != value
        }
        return self.upload.encode({**changed, "model": model})


@dataclass(frozen=True)
class Attempt:
    """One upstream call and what came of it: exactly one of a whole ``answer`` (2xx JSON, or a
    4xx passed on as it is), open ``events`` (a stream), or the ``error`` the gateway answers."""

    route: Route
    sent_at: float  # time.perf_counter() when sending began
    latency_ms: float  # until the answer (a stream: its headers) came
    answer: Answer | None = None
    events: requests.Response | None = None
    error: UpstreamError | None = None
    # Sent, and nothing says what the upstream made of it (a timeout after sending, a 2xx that
    # cannot be read): it may have generated, and billed, what was asked for.
    outcome_unknown: bool = False
    status: int | None = None  # the upstream's HTTP status, when it answered
    retry_after: str | None = None  # its Retry-After
    upstream_says_no_retry: bool = False  # it answered x-should-retry: false

    @property
    def sent_nothing(self) -> bool:
        """The request never reached the upstream (refused, DNS, TLS, connect timeout)."""
        return self.error is not None and self.error.should_retry and self.status is None


def send(
    operation: Operation,
    payload: Payload,
    timeout: Timeout,
    settings: UpstreamSettings,
    request_id: str,
    streamed: bool = False,
) -> Attempt:
    """POST the payload once to the route's upstream (never retried here: generations are
    billed) and say what came of it."""
    key = payload.route.provider_key
    conversion = conversion_for(key.adapter, operation.speaks)
    data, content_type = payload.encode(operation.speaks)
    url = conversion.url(key, operation.upstream_path, operation.native_path, payload.route.upstream_model)
    proxies, verify = upstream.route_settings(url, key, settings)
    sent_at = time.perf_counter()

    def attempt(**outcome: Any) -> Attempt:
        return Attempt(payload.route, sent_at, (time.perf_counter() - sent_at) * 1000, **outcome)

    try:
        answer = upstream.post(
            url,
            data,
            credentials={
                **conversion.bridge.credentials(key),
                **(dict(payload.forwarded) if conversion.native else {}),
            },
            request_id=request_id,
            timeout=(timeout.connect_s, timeout.read_s),
            proxies=proxies,
            verify=verify,
            stream=streamed,
            content_type=content_type,
        )
    except UpstreamError as e:
        return attempt(error=e, outcome_unknown=not e.should_retry)  # it may have been acted on
    if not isinstance(answer, Answer):
        return attempt(events=answer, status=answer.status_code)
    done = attempt(
        status=answer.status,
        retry_after=answer.retry_after,
        upstream_says_no_retry=(answer.should_retry or "").strip().lower() == "false",
    )
    try:
        return dataclasses.replace(done, answer=interpret(answer, key, conversion, payload.alias))
    except UpstreamBadResponse as e:
        # A 2xx the gateway cannot read: the upstream did the work, and may bill it.
        return dataclasses.replace(done, error=e, outcome_unknown=200 <= answer.status < 300)
    except UpstreamError as e:
        return dataclasses.replace(done, error=e)
