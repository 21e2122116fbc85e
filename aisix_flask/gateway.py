"""The app-wide state in ``app.extensions["aisix"]``: config (reloaded when the file changes),
ledger and limiter; and the request id every response carries."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import click
from flask import Flask, Response, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import ConfigError, Registry, load_config
from .errors import ServiceUnavailable
from .idempotency import Idempotency, store_for
from .ledger import Ledger
from .limits import Limiter

log = logging.getLogger(__name__)
access_log = logging.getLogger("aisix_flask.access")

REQUEST_ID_HEADER = "x-aisix-request-id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _signature(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Gateway:
    """One process's gateway: the registry it serves, its ledger and its limiter.

    The config file is looked at (one ``stat``) at most every ``reload_interval_s`` per
    process, on the next request; a changed file is loaded and validated whole, and only a
    valid one replaces the registry. A request keeps the registry it started with.
    """

    reload_interval_s = 1.0

    def __init__(
        self,
        path: str,
        signature: tuple[int, int, int] | None,
        registry: Registry | None,
        ledger: Ledger | None,
        limiter: Limiter | None,
    ):
        self.path = path
        self.ledger = ledger
        self.limiter = limiter
        self.idempotency = Idempotency(store_for(limiter.storage)) if limiter else None
        self._registry = registry
        self._signature = signature  # of the file as it was *before* ``registry`` was read from it
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def config(self) -> Registry:
        """The registry for this request, or 503 when the app started without one."""
        if self._registry is None:
            raise ServiceUnavailable("The gateway has no valid configuration loaded.")
        now = time.monotonic()
        if now - self._checked >= self.reload_interval_s and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._reload_if_changed()
            finally:
                self._lock.release()
        return self._registry

    def _reload_if_changed(self) -> None:
        signature = _signature(self.path)
        if signature == self._signature or signature is None:
            return
        self._signature = signature
        try:
            registry = load_config(self.path)
        except ConfigError as e:
            log.error("%s\nthe change is rejected; the last good config keeps serving", e)
            return
        old = self._registry.gateway
        for setting in ("usage_database_url", "ratelimit_storage_url"):
            if getattr(old, setting) != getattr(registry.gateway, setting):
                log.warning("config %s: %s changed; it takes effect after a restart", self.path, setting)
        for warning in registry.warnings:
            log.warning("config %s: %s", self.path, warning)
        self._registry = registry
        log.warning("config %s reloaded", self.path)


def current() -> Gateway:
    """This app's Gateway."""
    return current_app.extensions["aisix"]


def request_id() -> str:
    """This request's id: a safe incoming ``x-request-id``, else a new one."""
    rid = g.get("request_id")
    if rid is None:
        incoming = request.headers.get("x-request-id", "")
        rid = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_id = rid
    return rid


def _start_clock() -> None:
    g.started = time.perf_counter()


def _add_request_id(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = request_id()
    return response


# What the access log takes from a route's usage row: names, numbers, never text or secrets.
_ACCESS_FIELDS = (
    "api_key", "model", "upstream_model", "error_code", "upstream_latency_ms",
    "input_tokens", "output_tokens", "total_tokens", "images", "cost_usd", "pii_masked", "idempotent_replay",
)  # fmt: skip


def _log_access(response: Response) -> Response:
    """One JSON line per request (``gateway.access_log``, on by default)."""
    registry = current()._registry
    if registry is not None and not registry.gateway.access_log:
        return response
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": request_id(),
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "latency_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
        "client_ip": request.remote_addr,
    }
    row = g.get("usage_row")
    if row is not None:
        entry.update({name: getattr(row, name) for name in _ACCESS_FIELDS})
    access_log.info(json.dumps(entry))
    return response


def _init_access_log() -> None:
    """JSON lines on stderr (gunicorn's error stream), not mixed into the app's own log format."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def init_app(app: Flask, config_path: str) -> None:
    """Load the config (failing start-up when it is broken), open the ledger and the limiter."""
    # Taken before reading: an edit made while this worker boots is then seen as a change.
    signature = _signature(config_path)
    try:
        registry = load_config(config_path)
    except ConfigError:
        if click.get_current_context(silent=True) is None:
            raise
        # Under the flask CLI, start anyway so `flask aisix check-config` can list
        # the problems; anything that needs the config answers 503.
        app.extensions["aisix"] = Gateway(config_path, signature, None, None, None)
    else:
        for warning in registry.warnings:
            log.warning("config %s: %s", config_path, warning)
        settings = registry.gateway
        ledger, limiter = Ledger(settings.usage_database_url), Limiter(settings.ratelimit_storage_url)
        app.extensions["aisix"] = Gateway(config_path, signature, registry, ledger, limiter)
        app.config["MAX_CONTENT_LENGTH"] = settings.request_body_limit_bytes
        if settings.trusted_proxy_hops:
            # Believe X-Forwarded-For/-Proto only as far as the operator says proxies stand in
            # front: by default a caller cannot forge its address in the ledger. (A change needs
            # a restart: the middleware wraps the app once.)
            hops = settings.trusted_proxy_hops
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    _init_access_log()
    app.before_request(_start_clock)
    app.after_request(_add_request_id)
    app.after_request(_log_access)
