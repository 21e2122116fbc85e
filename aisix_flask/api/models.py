"""GET /v1/models and GET /v1/models/{id}: the aliases the caller's key may use, as OpenAI lists models."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..config import Config
from ..config.resources import ApiKey
from ..errors import ModelNotFound, PermissionDenied
from ..gateway import current
from ..policy.auth import authenticate

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models() -> Response:
    """Every exact alias the key may use, sorted by id (a wildcard row is a pattern, not a model)."""
    config, key = _caller()
    models = [m for m in config.router.exact() if key.may_use(m.display_name)]
    return jsonify(object="list", data=[_model(config, m.display_name, m.provider) for m in models])


@bp.get("/v1/models/<path:model>")
def retrieve_model(model: str) -> Response:
    """One alias: an exact row, or any id a wildcard row matches; 404 unknown, 403 not allowed."""
    config, key = _caller()
    route = None if "*" in model else config.router.resolve(model)  # a pattern is not a model
    if route is None:
        raise ModelNotFound(f"The model '{model}' does not exist on this gateway.", param="model")
    if not key.may_use(model):
        raise PermissionDenied(f"This API key may not use the model '{model}'.")
    return jsonify(_model(config, model, route.model.provider))


def _caller() -> tuple[Config, ApiKey]:
    config = current().config()
    return config, authenticate(config.api_keys, request.headers)


def _model(config: Config, alias: str, provider: str) -> dict[str, Any]:
    # created: when the config that defines it was written (the same in every worker).
    return {"id": alias, "object": "model", "created": config.modified_at, "owned_by": provider}
