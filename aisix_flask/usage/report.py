"""Reading the ledger: the rows the admin API lists, and the totals of the report, the usage page
and ``flask aisix usage``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, func, select

from .table import usage

SUMMARY_GROUPS = ("api_key", "model", "target", "route", "day")
_RELATIVE = re.compile(r"(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str) -> datetime:
    """``7d``, ``24h``, ``30m`` (ago) or an ISO-8601 time (naive means UTC); ValueError otherwise."""
    relative = _RELATIVE.fullmatch(value.strip())
    if relative:
        return datetime.now(UTC) - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    # An unencoded "+00:00" in a query string arrives as " 00:00".
    since = datetime.fromisoformat(value.strip().replace(" ", "+"))
    return since if since.tzinfo else since.replace(tzinfo=UTC)


class LedgerQueries:
    """The queries over the ledger's table (the ``Ledger`` writes it)."""

    engine: Engine

    def summary(self, *, since: datetime | None, by: str) -> list[dict[str, Any]]:
        """Requests, errors, images, tokens and cost per API key, model, target, route or UTC day."""
        c = usage.c
        group = {
            "api_key": c.api_key,
            "model": c.model,
            "target": c.target,
            "route": c.route,
            "day": func.date(c.created_at),
        }[by]
        stmt = (
            select(
                group.label(by),
                func.count().label("requests"),
                func.sum(case((c.status >= 400, 1), else_=0)).label("errors"),
                func.sum(c.images).label("images"),
                func.sum(c.input_tokens).label("input_tokens"),
                func.sum(c.output_tokens).label("output_tokens"),
                func.sum(c.total_tokens).label("total_tokens"),
                func.sum(c.cost_usd).label("cost_usd"),
                func.count(c.cost_usd).label("priced_requests"),
            )
            .group_by(group)
            .order_by(group)
        )
        if since is not None:
            stmt = stmt.where(c.created_at >= since.astimezone(UTC).replace(tzinfo=None))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        for row in rows:
            row[by] = None if row[by] is None else str(row[by])  # SQLite gives text, PostgreSQL a date
            for key in ("requests", "errors", "images", "input_tokens", "output_tokens", "total_tokens"):
                row[key] = int(row[key] or 0)
            # To the 1e-10 USD a row's cost is kept to (pricing.py), so that a nonzero sum stays nonzero.
            row["cost_usd"] = None if row["cost_usd"] is None else round(float(row["cost_usd"]), 10)
        return rows

    def query(
        self,
        *,
        limit: int = 100,
        since: datetime | None = None,
        api_key: str | None = None,
        model: str | None = None,
        target: str | None = None,
        failed: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows, newest first, filtered as the admin API asks (``failed``: status 400 and up)."""
        stmt = select(usage).order_by(usage.c.created_at.desc(), usage.c.id.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(usage.c.created_at >= since.astimezone(UTC).replace(tzinfo=None))
        if api_key is not None:
            stmt = stmt.where(usage.c.api_key == api_key)
        if model is not None:
            stmt = stmt.where(usage.c.model == model)
        if target is not None:
            stmt = stmt.where(usage.c.target == target)
        if failed:
            stmt = stmt.where(usage.c.status >= 400)
        with self.engine.connect() as conn:
            result = conn.execute(stmt).mappings().all()
        rows = []
        for r in result:
            row = {k: v for k, v in r.items() if k != "id"}
            row["created_at"] = r["created_at"].isoformat(timespec="milliseconds") + "Z"
            rows.append(row)
        return rows
