"""The app-wide state in ``app.extensions["aisix"]``, and the request id every response carries."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

import click
from flask import Flask, Response, current_app, g, request

from .config import ConfigError, Registry, load_config
from .errors import ServiceUnavailable
from .ledger import Ledger

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-aisix-request-id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass
class Gateway:
    """What every request reads: the registry and the ledger of this process."""

    registry: Registry | None
    ledger: Ledger | None
    config_error: ConfigError | None = None

    def ready(self) -> tuple[Registry, Ledger]:
        """The registry and ledger, or 503 when the app started without a usable config."""
        if self.registry is None or self.ledger is None:
            raise ServiceUnavailable("The gateway has no valid configuration loaded.")
        return self.registry, self.ledger


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


def _add_request_id(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = request_id()
    return response


def init_app(app: Flask, config_path: str) -> None:
    """Load the config (failing start-up when it is broken) and open the ledger."""
    try:
        registry = load_config(config_path)
    except ConfigError as e:
        if click.get_current_context(silent=True) is None:
            raise
        # Under the flask CLI, start anyway so `flask aisix check-config` can list
        # the problems; anything that needs the config answers 503.
        app.extensions["aisix"] = Gateway(None, None, e)
    else:
        for warning in registry.warnings:
            log.warning("config %s: %s", config_path, warning)
        ledger = Ledger(registry.gateway.usage_database_url)
        app.extensions["aisix"] = Gateway(registry, ledger)
        app.config["MAX_CONTENT_LENGTH"] = registry.gateway.request_body_limit_bytes
    app.after_request(_add_request_id)
