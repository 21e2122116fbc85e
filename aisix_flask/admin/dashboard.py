"""GET /admin/: the usage page, server-rendered (Jinja, an SVG chart); no build step, no script."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, render_template, request

from ..errors import InvalidApiKey
from ..gateway import Gateway, current
from ..policy.auth import authenticate
from ..policy.budgets import configured
from ..stores import STORE_ERRORS
from ..usage.display import format_usd

bp = Blueprint("dashboard", __name__)
bp.add_app_template_filter(format_usd, "usd")  # {{ cost|usd }}: a small cost is not shown as 0.0000

CHART_W, CHART_H, PAD = 760, 240, 44
HEADROOM = 24  # above the tallest bar: its label and the legend


@dataclass(frozen=True)
class Bar:
    """One day of the chart, in SVG units."""

    day: str
    requests: int
    images: int
    cost: float | None
    x: float
    width: float
    requests_h: float
    images_h: float


@bp.get("/admin/")
def usage_page() -> str:
    """Requests, images and cost per day; per key, per alias, per target (when there is
    routing: without it, every target is the alias named) and per route; the budgets; the latest errors."""
    gateway = current()
    try:
        authenticate(gateway.config().settings.admin_keys, request.headers)
    except InvalidApiKey as e:
        # Let a browser ask for the admin key (HTTP Basic: any user name, the key as password).
        e.extra_headers["WWW-Authenticate"] = 'Basic realm="aisix admin", charset="UTF-8"'
        raise
    days = min(max(request.args.get("days", 14, type=int), 1), 90)
    since = datetime.now(UTC) - timedelta(days=days - 1)
    since = since.replace(hour=0, minute=0, second=0, microsecond=0)
    ledger = gateway.ledger
    per_day = {row["day"]: row for row in ledger.summary(since=since, by="day")}
    by_model, by_target = ledger.summary(since=since, by="model"), ledger.summary(since=since, by="target")
    # Without routing, every target is the model named: the table would repeat the one before it.
    targets = {row["target"] for row in by_target} - {None}
    routed = bool(gateway.config().router.routing_plans()) or not targets <= {r["model"] for r in by_model}
    return render_template(
        "usage.html",
        days=days,
        bars=_bars(since, days, per_day),
        chart=(CHART_W, CHART_H, PAD),
        totals=_totals(per_day.values()),
        by_key=ledger.summary(since=since, by="api_key"),
        by_model=by_model,
        by_target=by_target if routed else None,
        by_route=ledger.summary(since=since, by="route"),
        errors=ledger.query(limit=20, since=since, failed=True),
        budgets=_budgets(gateway),
    )


def _budgets(gateway: Gateway) -> list[dict[str, Any]] | None:
    """Every budget and what it has left; None (and the page says so) when the store is down."""
    try:
        return gateway.budgets.status(configured(gateway.config()))
    except STORE_ERRORS:
        return None


def _bars(since: datetime, days: int, per_day: dict[str, dict[str, Any]]) -> list[Bar]:
    dates = [(since + timedelta(days=i)).date().isoformat() for i in range(days)]
    rows = [per_day.get(d, {}) for d in dates]
    top = max([r.get("requests", 0) for r in rows] + [1])
    slot = (CHART_W - PAD) / days
    scale = (CHART_H - PAD - HEADROOM) / top
    return [
        Bar(
            day=d,
            requests=r.get("requests", 0),
            images=r.get("images", 0),
            cost=r.get("cost_usd"),
            x=PAD + i * slot,
            width=max(slot * 0.38, 1),
            requests_h=r.get("requests", 0) * scale,
            images_h=min(r.get("images", 0), top) * scale,
        )
        for i, (d, r) in enumerate(zip(dates, rows, strict=True))
    ]


def _totals(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    costs = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    return {
        "requests": sum(r["requests"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "images": sum(r["images"] for r in rows),
        "tokens": sum(r["total_tokens"] for r in rows),
        "cost": sum(costs) if costs else None,  # not rounded: the page writes it (|usd)
    }
