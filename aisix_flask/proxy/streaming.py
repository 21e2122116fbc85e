"""``stream: true``: the upstream's server-sent events relayed to the caller as they arrive.

docs/contract.md, "Streaming": everything before the first byte answers as a plain request would;
after it, the stream ends with the upstream's own end, or with an error event that says why
(never a clean-looking end that hides a cut). The call (row, metrics, tokens, slots) finishes when
the stream does, however it ends.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Hashable, Iterator
from typing import Any

from flask import Response, request

from .. import workers
from ..config.resources import Guardrail
from ..errors import ContentPolicyViolation, GatewayError, InvalidRequest
from ..policy.guardrails import check_output
from ..policy.idempotency import HEADER as IDEMPOTENCY_HEADER
from ..providers import conversion_for
from .call import Billable, Call
from .events import KEEPALIVE, TranslatedEvents, UpstreamEvents
from .operation import Streaming
from .send import Attempt
from .stream_cuts import CallerGone, Interrupted, Silent, StreamCutShort
from .stream_ends import ROW_STATUS, UpstreamErrorEvent, error_event
from .upstream import Timeout

# A stream holds its concurrency slots for as long as it runs: leased (at least this long) and
# renewed every quarter of the lease while the stream runs, so a worker that dies mid-stream frees
# them within one lease.
STREAM_SLOT_LEASE_S = 120.0


def stream_slot_lease(keepalive_s: float, timeout: Timeout) -> float:
    """A stream's slot lease. The relay renews it when it wakes, at least every keep-alive
    interval once the stream runs; before that the upstream may take the connect timeout and the
    read timeout to send its headers, and a write to a slow caller may block for the read timeout."""
    return max(STREAM_SLOT_LEASE_S, 4 * keepalive_s, timeout.connect_s + timeout.read_s + 2 * keepalive_s)


# Output guardrails look at the newest text and this much of what came before it, so that a match
# split across chunks is found without scanning the whole answer again for every chunk.
GUARD_OVERLAP = 1024

# The key and its null, with the comma that joins it to its neighbour (before or after it). A key:
# inside a string its quotes would be escaped.
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')

log = logging.getLogger(__name__)


def refuse_idempotency_key() -> None:
    """A stream cannot be replayed, so it cannot be made idempotent."""
    if request.headers.get(IDEMPOTENCY_HEADER) is not None:
        raise InvalidRequest(
            "Idempotency-Key cannot be used with stream: true (a stream cannot be replayed); "
            "send it only with requests that are not streamed.",
            param=IDEMPOTENCY_HEADER,
        )


def stream_response(
    call: Call, attempt: Attempt, spec: Streaming, hide_usage: bool, timeout: Timeout, lease_s: float
) -> Response:
    """The caller's answer: the relay of the attempt's events, which finishes the call when it
    ends. The caller's connection (gunicorn gives it) is watched for a hang-up meanwhile."""
    assert attempt.events is not None
    caller = request.environ.get("gunicorn.socket")
    try:
        upstream = UpstreamEvents(
            attempt.events,
            silence_s=timeout.read_s,
            keepalive_s=call.config.settings.stream_keepalive_s,
            caller=caller,
            stop_by=workers.streams_must_end_by,
        )
    except BaseException:
        attempt.events.close()
        raise
    events: UpstreamEvents | TranslatedEvents = upstream
    conversion = conversion_for(attempt.route.provider_key.adapter, call.operation.speaks)
    if conversion.translates:  # (another API's events: the caller's are what is relayed)
        events = TranslatedEvents(upstream, conversion.events(upstream, call.row.model or ""))
    guardrails = call.config.output_guardrails if spec.text else ()
    relay = Relay(
        call, events, spec, hide_usage, guardrails, timeout.read_s, lease_s, attempt.sent_at, caller
    )
    call.hand_end_to_stream()
    response = Response(relay, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the events
    return response


class Relay:
    """The iterable the caller's answer is made of; ``close`` (the WSGI server calls it, however
    the stream ended) closes the upstream connection and finishes the call."""

    def __init__(
        self,
        call: Call,
        events: UpstreamEvents | TranslatedEvents,
        spec: Streaming,
        hide_usage: bool,
        guardrails: tuple[Guardrail, ...],
        write_timeout_s: float,
        lease_s: float,
        sent_at: float,
        caller: socket.socket | None = None,
    ) -> None:
        self.call = call
        # A caller that stops reading would block the server's write, and this thread, for ever:
        # a write that waits longer than the model's timeout (or past a stopping worker's
        # deadline) fails, and the stream ends as if the caller had hung up.
        self.caller = caller
        self._caller_timeout = caller.gettimeout() if caller is not None else None
        self._write_timeout_s = write_timeout_s
        self.spec = spec
        self.events = events
        self.hide_usage = hide_usage
        self.guardrails = guardrails
        self.tails: dict[Hashable, str] = {}  # the end of each text so far (output guardrails)
        self.flagged: list[str] = []
        self.complete = False  # the event that completes the stream was relayed
        self.ended = False  # nothing more is to be relayed
        self.failure: StreamCutShort | GatewayError | None = None
        self._closed = False
        self._sent_at = sent_at
        # The slots were leased in step 10, moments before the upstream call was sent: renewed on
        # the clock of that send (a lease of 120 s or more, renewed every quarter, has the room),
        # however long the upstream then took to answer.
        self._lease_s = lease_s
        self._renew_at = sent_at + lease_s / 4
        self._first_event = True

    def __iter__(self) -> Iterator[bytes]:
        # The events taken since the last write. Those that arrived together (a chat stream's last
        # words, its usage chunk and [DONE] come in one read) are written together: each write is
        # a trip through werkzeug, gunicorn and the socket.
        taken: list[bytes] = []
        try:
            for event in self.events:
                if self._first_event and event is not KEEPALIVE:
                    self._first_event = False
                    self.call.note_first_event((time.perf_counter() - self._sent_at) * 1000)
                out = event if event is KEEPALIVE else self._take(event)
                if out:
                    taken.append(out)
                if taken and (self.ended or not self.events.more_ready()):
                    self._bound_the_write()
                    yield b"".join(taken)
                    taken.clear()
                if self.ended:
                    return
                if time.perf_counter() >= self._renew_at:
                    self._renew_at = time.perf_counter() + self._lease_s / 4
                    self.call.renew_slots(self._lease_s)
            if not self.complete:
                raise Interrupted("the stream ended without its last event")
            self.ended = True
        except (StreamCutShort, ContentPolicyViolation) as e:
            self.failure = e
            # Also to a caller that seems gone: one that only closed its sending side still reads,
            # and must not see a clean end. (After the events taken before it.)
            yield b"".join(taken) + error_event(e, self.call.operation.speaks)
        except Exception:  # a bug here must not look like a clean end, nor like a hang-up
            log.exception("stream relay failed")
            self.failure = GatewayError()
            yield b"".join(taken) + error_event(self.failure, self.call.operation.speaks)
        finally:
            self.close()

    def _bound_the_write(self) -> None:
        if self.caller is None:
            return
        limit = self._write_timeout_s
        stop_by = workers.streams_must_end_by()
        if stop_by is not None:
            limit = min(limit, max(0.1, stop_by - time.monotonic()))
        try:
            self.caller.settimeout(limit)
        except OSError:
            self.caller = None

    def _take(self, event: bytes) -> bytes | None:
        """What to relay of one event (None: nothing), noting what it says on the way."""
        data = _data(event)
        if data is None:
            return event  # a comment, or an event without data: nothing to read in it
        document = _json(data)
        if isinstance(document, dict):
            # The upstream's own error event (the Responses API's has its fields at the top): relayed,
            # and it ends here.
            if error := self.spec.upstream_error(document):
                self.spec.note_event(self.call.row, document)  # (what it says was used)
                self.failure = UpstreamErrorEvent(error)
                self.ended = True
                return event
            self.spec.note_event(self.call.row, document)
            if self.call.operation.creates is not None:
                self.call.note_created(document)
            if self.hide_usage and self.spec.is_usage_only(document):
                return None
            if self.guardrails:
                self._guard(document)
        if self.spec.is_final(data, document):
            self.complete = True
            self.ended = self.spec.last
        return _USAGE_NULL.sub(b"", event) if self.hide_usage else event

    def _guard(self, document: dict[str, Any]) -> None:
        """Output guardrails over each newest text (a choice's content, a tool call's arguments) and
        what came just before it; the event that completes a match is not relayed
        (ContentPolicyViolation ends the stream instead)."""
        assert self.spec.text is not None  # guardrails are read only from a stream that has text
        for continues, text in self.spec.text(document):
            window = self.tails.get(continues, "") + text
            self.tails[continues] = window[-GUARD_OVERLAP:]
            check_output(self.guardrails, window, self.flagged)

    def close(self) -> None:
        """Close the upstream connection at once and finish the call, once."""
        if self._closed:
            return
        self._closed = True
        self.events.close(finished=self.failure is None and self.complete)
        if self.caller is not None:
            try:
                self.caller.settimeout(self._caller_timeout)  # the connection may serve again
            except OSError:
                pass
        row = self.call.row
        row.upstream_latency_ms = (time.perf_counter() - self._sent_at) * 1000
        row.note_flagged(self.flagged)
        failure = self.failure
        if failure is None and not self.ended:
            failure = CallerGone("the caller hung up")  # closed while events were still coming
        if failure is None:
            row.status = 200
        elif isinstance(failure, GatewayError):
            row.status, row.error_code = failure.code, failure.error_code
        elif isinstance(failure, StreamCutShort):
            row.status, row.error_code = ROW_STATUS.get(type(failure), 502), failure.code
        billable = Billable(
            priced=bool(row.total_tokens or row.images),  # what is known was generated
            # Ended before its end, not by an error of the upstream's own: what came of it is unknown.
            unknown=not self.complete and not isinstance(failure, UpstreamErrorEvent),
        )
        # The upstream's own failure (not the caller's hang-up, a guardrail or a restart): its
        # routing target cools down.
        upstream_failed = isinstance(failure, Interrupted | Silent | UpstreamErrorEvent)
        self.call.finish(200, billable, upstream_failed)


def _data(event: bytes) -> str | None:
    """An event's data: its ``data:`` lines joined, or None when it has none."""
    if event.startswith(b"data:"):  # most events: one data line, then the blank line
        line = event[5:].rstrip(b"\r\n")
        if b"\n" not in line and b"\r" not in line:
            return line.removeprefix(b" ").decode("utf-8", "replace")
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return "\n".join(line[5:].removeprefix(b" ").decode("utf-8", "replace") for line in lines)


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
