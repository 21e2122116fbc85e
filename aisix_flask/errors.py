"""Gateway errors, the OpenAI error envelope, and the handlers that render them."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, has_request_context, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


ANTHROPIC_ROUTE = "/v1/messages"
# Anthropic's error types by status, as its API answers them and its SDK reads them.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_envelope(status: int, message: str) -> dict[str, Any]:
    """An error in Anthropic's envelope: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def envelope(
    status: int,
    message: str,
    type: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build a JSON response in the OpenAI error envelope; on Anthropic's route (``/v1/messages``)
    in Anthropic's, whose SDK reads it (README, "Anthropic's Messages API")."""
    body: dict[str, Any] = {"error": {"message": message, "type": type, "param": param, "code": code}}
    if has_request_context() and request.path.startswith(ANTHROPIC_ROUTE):
        body = anthropic_envelope(status, f"{param}: {message}" if param else message)
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


class GatewayError(HTTPException):
    """An error the gateway answers itself; subclasses override the class defaults.

    ``code`` is the HTTP status (Werkzeug's name for it); ``error_code`` is the
    envelope's ``code``.
    """

    code = 500
    error_type = "server_error"
    error_code: str | None = "internal_error"
    message = "The gateway failed to handle the request."
    # x-should-retry (the OpenAI clients obey it): True only where a retry can help and the
    # upstream cannot have generated (and billed) anything yet.
    should_retry = False
    # Raised after the upstream answered (an output guardrail): what it generated was billed.
    generated = False

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        should_retry: bool | None = None,
        generated: bool | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.param = param
        if error_code is not None:
            self.error_code = error_code
        if should_retry is not None:
            self.should_retry = should_retry
        if generated is not None:
            self.generated = generated
        self.extra_headers = headers or {}

    def headers_out(self) -> dict[str, str]:
        """The extra headers and the retry hint."""
        return {**self.extra_headers, "x-should-retry": "true" if self.should_retry else "false"}

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        """Render the error as the OpenAI envelope."""
        return envelope(
            self.code,
            self.description or self.message,
            self.error_type,
            self.error_code,
            self.param,
            self.headers_out(),
        )


class ResponseNotFound(GatewayError):
    code = 404
    error_type = "invalid_request_error"
    error_code = "response_not_found"


class InvalidApiKey(GatewayError):
    code = 401
    error_type = "authentication_error"
    error_code = "invalid_api_key"
    message = "Invalid API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."


class ApiKeyDisabled(InvalidApiKey):
    error_code = "api_key_disabled"
    message = "This API key is disabled."


class ApiKeyExpired(InvalidApiKey):
    error_code = "api_key_expired"
    message = "This API key has expired."


class InvalidRequest(GatewayError):
    code = 400
    error_type = "invalid_request_error"
    error_code = "invalid_value"
    message = "The request is not valid."


class InvalidJson(InvalidRequest):
    error_code = "invalid_json"
    message = "The request body is not valid JSON."


class MissingParameter(InvalidRequest):
    error_code = "missing_required_parameter"


class UnsupportedProvider(InvalidRequest):
    error_code = "unsupported_provider"


class PriceUnknown(InvalidRequest):
    error_code = "price_unknown"


class RequestTooLarge(InvalidRequest):
    code = 413
    error_code = "request_too_large"


class IdempotencyKeyReused(InvalidRequest):
    code = 422
    error_code = "idempotency_key_reused"
    message = "This Idempotency-Key was used with a different request body; use a new key for a new request."


class IdempotencyInProgress(InvalidRequest):
    code = 409
    error_code = "idempotency_in_progress"
    message = "A request with this Idempotency-Key is still running; retry after it finishes."
    should_retry = True  # nothing new is sent: the retry gets the first request's answer


class IdempotencyAnswerNotStored(InvalidRequest):
    code = 409
    error_code = "idempotency_answer_not_stored"


class PermissionDenied(GatewayError):
    code = 403
    error_type = "permission_error"
    error_code = "model_not_allowed"


class ModelNotFound(GatewayError):
    code = 404
    error_type = "invalid_request_error"
    error_code = "model_not_found"


class ContentPolicyViolation(GatewayError):
    code = 422
    error_type = "content_filter"
    error_code = "content_policy_violation"


class RateLimited(GatewayError):
    code = 429
    error_type = "rate_limit_error"
    error_code = "rate_limit_exceeded"
    should_retry = True  # after Retry-After; nothing was sent upstream
    refused_group = 0  # which of the groups admitted together it refused (policy.limits)


class NotImplementedOperation(GatewayError):
    code = 501
    error_type = "not_implemented"
    error_code = "unsupported_operation"


class ProviderUnavailable(GatewayError):
    code = 503
    error_type = "provider_error"
    error_code = "provider_unavailable"


class NoTargetAvailable(GatewayError):
    """Every target of a routing model is cooling down after a failure."""

    code = 503
    error_type = "provider_error"
    error_code = "no_target_available"
    should_retry = True  # nothing was sent


class ServiceUnavailable(GatewayError):
    code = 503
    error_type = "server_error"
    error_code = "service_unavailable"


class UpstreamError(GatewayError):
    code = 502
    error_type = "upstream_error"
    error_code = "upstream_server_error"


class UpstreamAuthFailed(UpstreamError):
    error_code = "upstream_auth_failed"


class UpstreamUnreachable(UpstreamError):
    """The connection failed; ``should_retry`` when it failed before the request was sent."""

    error_code = "upstream_unreachable"


class UpstreamBadResponse(UpstreamError):
    error_code = "upstream_bad_response"


class UpstreamTimeout(UpstreamError):
    code = 504
    error_type = "timeout"
    error_code = "upstream_timeout"


# Werkzeug's own errors (unknown path, wrong method, body over the limit) keep
# their status and headers (the ``Allow`` of a 405) but speak the envelope.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def handle_http_exception(e: HTTPException) -> Response:
    """Render any HTTP error in the OpenAI envelope, keeping its headers."""
    if isinstance(e, GatewayError):
        return e.get_response()
    if e.code == 404:
        message = f"Invalid URL ({request.method} {request.path})"
    elif e.code == 405:
        message = f"Method {request.method} is not allowed for {request.path}"
    else:
        message = e.description or e.name
    headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
    headers["x-should-retry"] = "false"
    error_type = "invalid_request_error" if (e.code or 500) < 500 else "server_error"
    code = e.code or 500
    return envelope(code, message, error_type, _HTTP_CODES.get(code), None, headers)


def handle_unexpected(e: Exception) -> Response:
    """Log a bug and answer 500 in the envelope, never with a traceback."""
    log.exception("unhandled error on %s %s", request.method, request.path)
    return GatewayError().get_response()


def init_app(app: Flask) -> None:
    """Register the error handlers."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
