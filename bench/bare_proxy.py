"""The baseline: a bare Flask + requests proxy, no auth, validation, policy or ledger.

BARE_UPSTREAM=http://127.0.0.1:8091/v1 gunicorn -c gunicorn.conf.py -b 127.0.0.1:8092 bench.bare_proxy:app

A request that accepts ``text/event-stream`` (bench/aioload.py's streams) is relayed as the
upstream sends it; any other answer is read whole and passed back. One Session per thread under
gthread; under gevent, where a greenlet lives for one request, the process shares one (as the
gateway does).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8091/v1")
app = Flask(__name__)
_local = threading.local()
_shared: list[requests.Session] = []


def _session() -> requests.Session:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        if not _shared:
            _shared.append(requests.Session())
            _shared[0].mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=1024))
        return _shared[0]
    session = getattr(_local, "session", None) or requests.Session()
    _local.session = session
    return session


@app.post("/v1/images/generations")
@app.post("/v1/chat/completions")
def proxy() -> Response:
    """Forward the body as it came and pass the answer back."""
    stream = "text/event-stream" in request.headers.get("Accept", "")
    r = _session().post(
        UPSTREAM + request.path.removeprefix("/v1"),
        data=request.get_data(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"},
        timeout=(5, 300),
        stream=stream,
    )
    if not stream:
        return Response(r.content, status=r.status_code, content_type=r.headers.get("Content-Type"))

    def relay() -> Iterator[bytes]:
        with r:
            yield from r.raw.stream(64 * 1024, decode_content=False)

    return Response(relay(), status=r.status_code, content_type=r.headers.get("Content-Type"))
