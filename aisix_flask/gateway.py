"""The app-wide state in ``app.extensions["aisix"]``: the config (reloaded when the file changes),
the ledger, the limiter and the idempotency store; and what a request to the gateway carries."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Generic, TypeVar

import click
from flask import Flask, current_app, has_request_context
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Config, ConfigError, load_config
from .errors import ServiceUnavailable
from .incoming import GatewayRequest, this_request
from .policy.budgets import Budgets
from .policy.idempotency import Idempotency
from .policy.limits import Limiter
from .policy.routing import RoutingState
from .stores.idempotency import idempotency_store_for
from .stores.response_owners import response_owners_for
from .stores.routing import routing_store_for
from .stores.spend import spend_store_for
from .usage.ledger import Ledger

log = logging.getLogger(__name__)


def _signature(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


_S = TypeVar("_S")


def _opened(service: _S | None) -> _S:
    """A service of a gateway that has a config; 503 for one that started without."""
    if service is None:
        raise ServiceUnavailable("The gateway has no valid configuration loaded.")
    return service


class _Service(Generic[_S]):
    """A service of the gateway (kept as ``_<name>``), or 503 when it started without a config."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.kept = f"_{name}"

    def __get__(self, gateway: object, owner: type | None = None) -> _S:
        service: _S | None = getattr(gateway, self.kept)
        return _opened(service)


class Gateway:
    """One process's gateway: the config it serves, its ledger and its limiter.

    A thread per process looks at the config file (one ``stat``) every ``watch_interval_s``,
    whether or not the process serves traffic, so every gunicorn worker follows the same edits.
    A changed file is loaded and validated whole, off the request path; only a valid one
    replaces the config (README, "Live config"). A request keeps the config it started with.
    """

    watch_interval_s = 0.5
    # A file modified this recently may still be being written (an editor that saves in place
    # truncates first): it is read on a later look, once it has stayed the same this long.
    settle_s = 0.2

    ledger: _Service[Ledger] = _Service()  # the usage ledger
    limiter: _Service[Limiter] = _Service()  # rate limits and concurrency slots
    budgets: _Service[Budgets] = _Service()  # USD budgets
    idempotency: _Service[Idempotency] = _Service()  # Idempotency-Key records

    def __init__(
        self,
        path: str,
        signature: tuple[int, int, int] | None,
        config: Config | None,
        ledger: Ledger | None,
        limiter: Limiter | None,
    ):
        self.path = path
        self._ledger, self._limiter = ledger, limiter
        self._idempotency = (
            Idempotency(idempotency_store_for(limiter.storage), limiter.health) if limiter else None
        )
        self._budgets = Budgets(spend_store_for(limiter.storage), limiter.health) if limiter else None
        # who created each stored response (GET/DELETE /v1/responses/{id}), beside the rate limits
        self.response_owners = response_owners_for(limiter.storage) if limiter else None
        # cooldowns, calls in flight and latencies of routing targets, beside the rate limits
        self.routing = (
            RoutingState(routing_store_for(limiter.storage), limiter.health) if limiter else RoutingState()
        )
        self._config = config
        self._signature = signature  # of the file as it was *before* ``config`` was read from it
        self._lock = threading.Lock()  # held by a look at the file from its start to its end
        self._closed = threading.Event()
        if config is not None:
            _GATEWAYS.add(self)
            self._watch()

    def config(self) -> Config:
        """The config this request runs under (see ``request_config``), or 503 when the app
        started without one."""
        return _opened(self.request_config())

    def request_config(self) -> Config | None:
        """The config this request runs under: the one serving when it first asked, whatever a
        reload does meanwhile (a stream's end, its access line); outside a request, the one
        serving now. None when the app started without one."""
        if not has_request_context():
            return self._config
        current_request = this_request()
        if current_request.config is None:
            current_request.config = self._config
        return current_request.config

    def _watch(self) -> None:
        thread = threading.Thread(
            target=_watch, args=(weakref.ref(self), self._closed), name="aisix-config", daemon=True
        )
        thread.start()

    def reload_if_changed(self) -> bool:
        """Load the file if it changed since it was last read; True when the new config serves."""
        with self._lock:
            signature = _signature(self.path)
            if signature == self._signature or signature is None:
                return False
            age = time.time() - signature[0] / 1e9
            if 0 <= age < self.settle_s:
                return False  # still being written, perhaps: the next look decides
            self._signature = signature
            try:
                config = load_config(self.path)
            except ConfigError as e:
                log.error("%s\nthe change is rejected; the last good config keeps serving", e)
                return False
            old = self._config
            assert old is not None  # only a gateway that has a config watches its file
            emptied = [
                what for what in ("api_keys", "models") if _count(old, what) and not _count(config, what)
            ]
            if emptied:
                log.error(
                    "config %s: the change removes every one of %s; a file cut short while being "
                    "written looks like this, so it is rejected and the last good config keeps "
                    "serving (to run without them, restart the gateway with this file)",
                    self.path,
                    " and ".join(emptied),
                )
                return False
            for setting, name in (("usage", "gateway.usage"), ("ratelimit_storage_url", "gateway.ratelimit")):
                if getattr(old.settings, setting) != getattr(config.settings, setting):
                    log.warning("config %s: %s changed; it takes effect after a restart", self.path, name)
            for warning in config.warnings:
                log.warning("config %s: %s", self.path, warning)
            self._config = config
            log.warning("config %s reloaded", self.path)
            return True

    def close(self) -> None:
        """Stop watching the file and close the ledger (tests; a worker just exits)."""
        self._closed.set()
        self.routing.flush()
        if self._budgets is not None:
            self._budgets.flush()
        if self._ledger is not None:
            self._ledger.close()


def _count(config: Config, what: str) -> int:
    return len(config.api_keys) if what == "api_keys" else len(config.router)


def _watch(ref: weakref.ref[Gateway], closed: threading.Event) -> None:
    """The watcher thread: holds the gateway only while looking, so an app dropped is collected."""
    while True:
        gateway = ref()
        if gateway is None:
            return
        interval = gateway.watch_interval_s
        try:
            gateway.reload_if_changed()
        except Exception:  # a watcher that dies would silently freeze this worker's config
            log.exception("config %s: checking the file failed", gateway.path)
        del gateway
        if closed.wait(interval):
            return


_GATEWAYS: weakref.WeakSet[Gateway] = weakref.WeakSet()


def _after_fork() -> None:
    # Threads do not survive a fork (gunicorn's preload_app): each worker watches for itself.
    for gateway in list(_GATEWAYS):
        if not gateway._closed.is_set():
            gateway._lock = threading.Lock()
            gateway._watch()


os.register_at_fork(after_in_child=_after_fork)


def current() -> Gateway:
    """This app's Gateway."""
    gateway: Gateway | Unopened = current_app.extensions["aisix"]
    if isinstance(gateway, Unopened):
        gateway = current_app.extensions["aisix"] = gateway.open()
    return gateway


def open_gateway(config_path: str) -> Gateway:
    """Load the config (ConfigError when it is broken), open the ledger and the limiter."""
    # Taken before reading: an edit made while this worker boots is then seen as a change.
    signature = _signature(config_path)
    config = load_config(config_path)
    for warning in config.warnings:
        log.warning("config %s: %s", config_path, warning)
    settings = config.settings
    usage = settings.usage
    ledger = Ledger(usage.database_url, usage.journal, usage.queue_rows)
    limiter = Limiter(settings.ratelimit_storage_url)
    return Gateway(config_path, signature, config, ledger, limiter)


class Unopened:
    """The gateway of an app made by the flask CLI, opened on first use.

    ``flask --app wsgi aisix check-config other.yaml`` creates the app (the CLI finds its commands
    there), but must talk about ``other.yaml`` only and work where ``./config.yaml`` is missing or
    broken: nothing is read, logged or created until a command (or ``flask run``) needs it.
    """

    def __init__(self, config_path: str) -> None:
        self.path = config_path

    def open(self) -> Gateway:
        """The gateway; with a broken config, one whose every use answers 503."""
        try:
            return open_gateway(self.path)
        except ConfigError as e:
            log.error("%s", e)
            return Gateway(self.path, None, None, None, None)


def init_app(app: Flask, config_path: str) -> None:
    """Open the gateway (failing start-up when the config is broken); under the flask CLI, on
    first use instead."""
    app.request_class = GatewayRequest
    if click.get_current_context(silent=True) is not None:
        app.extensions["aisix"] = Unopened(config_path)
    else:
        gateway = app.extensions["aisix"] = open_gateway(config_path)
        gateway.ledger.start()  # replays what an earlier run left in the journal
        settings = gateway.config().settings
        if settings.trusted_proxy_hops:
            # Believe X-Forwarded-For/-Proto only as far as the operator says proxies stand in
            # front: by default a caller cannot forge its address in the ledger. (A change needs
            # a restart: the middleware wraps the app once.)
            hops = settings.trusted_proxy_hops
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
