"""Waiting for a live config edit to be read: what the tests of reloads share."""

from __future__ import annotations

import time
from pathlib import Path

from aisix_flask.gateway import _GATEWAYS, _signature


def looked_at(path):
    """Wait until every open gateway watching ``path`` has looked at the file as it is now and is
    done (read it, or rejected it): on a busy machine a look can end later than any fixed pause.
    With no gateway watching it yet, a moment's pause."""
    now, began = _signature(str(path)), time.monotonic()
    while time.monotonic() - began < 10:
        watching = [
            g for g in list(_GATEWAYS) if not g._closed.is_set() and Path(g.path).resolve() == path.resolve()
        ]
        if all(g._signature == now for g in watching) and (watching or time.monotonic() - began > 0.2):
            for gateway in watching:
                with gateway._lock:  # a look holds it from its start to its end
                    pass
            return
        time.sleep(0.01)
    raise AssertionError(f"no watcher looked at {path} within 10 s")
