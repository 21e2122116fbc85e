"""Admin API (/admin/v1/usage, /usage/summary, /budgets, /routing), health probes (/livez,
/readyz), /metrics."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from .. import metrics
from ..config.aliases import Candidate
from ..errors import InvalidRequest, ServiceUnavailable
from ..gateway import current
from ..policy.auth import authenticate
from ..policy.budgets import configured
from ..policy.limits import Limiter
from ..stores.routing import TargetFigures
from ..usage.ledger import Ledger
from ..usage.report import SUMMARY_GROUPS, parse_since

bp = Blueprint("admin", __name__)

MAX_LIMIT = 1000


@bp.get("/livez")
def livez() -> Response:
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """503 unless the config is loaded, the ledger answers and its writer runs; the rows waiting in
    the ledger's journal are counted (None when the file cannot be read). A rate-limit store
    that does not answer is named but keeps it 200: the limiter lets requests through meanwhile,
    and a probe failing on a store every instance shares would take them all out at once."""
    gateway = current()
    gateway.config()
    stores: dict[str, Ledger | Limiter] = {"ledger": gateway.ledger, "ratelimit": gateway.limiter}
    up = {name: store.ping() for name, store in stores.items()}
    if not up["ledger"]:
        waiting = gateway.ledger.journal_rows()
        raise ServiceUnavailable(
            "The usage ledger database is not reachable"
            + (f"; {waiting} usage rows wait in the local journal." if waiting else ".")
        )
    if gateway.ledger.restart_stopped_writer():
        raise ServiceUnavailable("The usage ledger writer of this worker had stopped; it was started again.")
    report: dict[str, dict[str, object]] = {
        name: {"backend": store.health.backend, "up": up[name]} for name, store in stores.items()
    }
    report["ledger"]["journal_rows"] = gateway.ledger.journal_rows()
    return jsonify(status="ok" if all(up.values()) else "degraded", stores=report)


@bp.get("/metrics")
def prometheus() -> Response:
    """Prometheus text format, summed over every gunicorn worker."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@bp.get("/admin/v1/usage")
def usage() -> Response:
    """Ledger rows, newest first: ``?limit=N&since=ISO&api_key=NAME&model=ALIAS&target=ALIAS``."""
    gateway = current()
    authenticate(gateway.config().settings.admin_keys, request.headers)
    args = request.args
    rows = gateway.ledger.query(
        limit=_limit(args.get("limit")),
        since=_since(args.get("since")),
        api_key=args.get("api_key"),
        model=args.get("model"),
        target=args.get("target"),
    )
    return jsonify(object="list", data=rows)


@bp.get("/admin/v1/usage/summary")
def usage_summary() -> Response:
    """Totals per group: ``?since=7d&by=api_key|model|target|route|day`` (as ``flask aisix usage``)."""
    gateway = current()
    authenticate(gateway.config().settings.admin_keys, request.headers)
    by = request.args.get("by", "model")
    if by not in SUMMARY_GROUPS:
        raise InvalidRequest(f"'by' must be one of {', '.join(SUMMARY_GROUPS)}.", param="by")
    since = _since(request.args.get("since", "7d"))
    rows = gateway.ledger.summary(since=since, by=by)
    return jsonify(object="list", by=by, since=since.isoformat() if since else None, data=rows)


@bp.get("/admin/v1/budgets")
def budgets() -> Response:
    """Every budget's limit, spend, remaining and period end (UTC), keys first, then models."""
    gateway = current()
    config = gateway.config()
    authenticate(config.settings.admin_keys, request.headers)
    return jsonify(object="list", data=gateway.budgets.status(configured(config)))


@bp.get("/admin/v1/routing")
def routing() -> Response:
    """Every routing model, its strategy and, per target: weight, priority, until when it cools
    down, calls in flight, its moving average of latency and its failures since it last answered,
    as every worker sees them (the store away: as this worker does)."""
    gateway = current()
    config = gateway.config()
    authenticate(config.settings.admin_keys, request.headers)
    plans = config.router.routing_plans()
    figures = gateway.routing.figures(sorted({c.route.alias for p in plans for c in p.candidates}))
    now = time.time()
    return jsonify(
        object="list",
        data=[
            {
                "model": plan.alias,
                "strategy": plan.routing.strategy if plan.routing is not None else None,
                "targets": [_target(c, figures[c.route.alias], now) for c in plan.candidates],
            }
            for plan in plans
        ],
    )


def _target(candidate: Candidate, figures: TargetFigures, now: float) -> dict[str, object]:
    def at(seconds_from_now: float | None) -> str | None:
        if seconds_from_now is None:
            return None
        moment = datetime.fromtimestamp(now + seconds_from_now, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    route = candidate.route
    return {
        "model": route.alias,
        "provider": route.model.provider,
        "upstream_model": route.upstream_model,
        "weight": candidate.weight,
        "priority": candidate.priority,
        "cooling_until": at(figures.cooling_s) if figures.cooling_s else None,
        "in_flight": figures.in_flight,
        "latency_ms": None if figures.latency_ms is None else round(figures.latency_ms, 2),
        "failures": figures.failures,
        "last_failure_at": None if figures.failed_s_ago is None else at(-figures.failed_s_ago),
    }


def _limit(value: str | None) -> int:
    if value is None:
        return 100
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_LIMIT}.", param="limit")
    return int(value)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError:
        raise InvalidRequest(
            "'since' must be like 7d, 24h, 30m or an ISO-8601 time such as 2026-01-31T00:00:00Z.",
            param="since",
        ) from None
