"""aisix-flask: a synchronous OpenAI-format AI gateway for WSGI hosts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

__version__ = "0.1.0"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the gateway: load the config (``AISIX_CONFIG``), open the ledger, add the routes."""
    from . import access, cli, errors, gateway
    from .admin import api as admin_api
    from .admin import dashboard
    from .api import chat, embeddings, image_edits, images, messages, models, rerank, responses

    app = Flask(__name__)
    if test_config is not None:
        app.config.from_mapping(test_config)
    config_path = app.config.get("AISIX_CONFIG") or os.environ.get("AISIX_CONFIG", "config.yaml")

    errors.init_app(app)
    gateway.init_app(app, config_path)
    access.init_app(app)
    for route in (models, chat, messages, responses, embeddings, rerank, images, image_edits):
        app.register_blueprint(route.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(dashboard.bp)
    cli.init_app(app)
    return app
