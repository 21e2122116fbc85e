"""The baseline: a bare Flask + requests proxy, no auth, validation, policy or ledger.

BARE_UPSTREAM=http://127.0.0.1:8091/v1 gunicorn -c gunicorn.conf.py -b 127.0.0.1:8092 bench.bare_proxy:app
"""

from __future__ import annotations

import os
import threading

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8091/v1")
app = Flask(__name__)
_local = threading.local()


@app.post("/v1/images/generations")
@app.post("/v1/chat/completions")
def proxy() -> Response:
    """Forward the body as it came and pass the answer back."""
    session = getattr(_local, "session", None) or requests.Session()
    _local.session = session
    r = session.post(
        UPSTREAM + request.path.removeprefix("/v1"),
        data=request.get_data(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"},
        timeout=(5, 300),
    )
    return Response(r.content, status=r.status_code, content_type=r.headers.get("Content-Type"))
