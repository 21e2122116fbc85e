"""How a relayed stream can end other than cleanly: each kind names the code its usage row records
(docs/contract.md, "Streaming")."""

from __future__ import annotations


class StreamCutShort(Exception):
    """A stream that did not end cleanly; ``code`` is what its usage row records."""

    code = "upstream_stream_interrupted"


class Interrupted(StreamCutShort):
    """The upstream closed or reset the connection, or broke the framing, before the end."""


class Silent(StreamCutShort):
    """The upstream sent nothing for longer than the model's timeout."""

    code = "upstream_timeout"


class CallerGone(StreamCutShort):
    """The caller hung up."""

    code = "client_disconnected"


class ShuttingDown(StreamCutShort):
    """The worker is stopping and its grace period is nearly over."""

    code = "gateway_shutting_down"
