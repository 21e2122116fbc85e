"""Prometheus metrics, correct across gunicorn workers (prometheus_client's multiprocess mode).

gunicorn.conf.py points ``PROMETHEUS_MULTIPROC_DIR`` at a directory the workers share; without
it (``flask run``, tests) the metrics are this process's own. Labels name configured model rows,
routes, statuses and guardrails, never caller input or key names: the label set stays bounded.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "aisix_requests", "Requests answered, by route, model row and status.", ["route", "model", "status"]
)
LATENCY = Histogram(
    "aisix_request_latency_seconds",
    "Time from the request to the answer.",
    ["route", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UPSTREAM_LATENCY = Histogram(
    "aisix_upstream_latency_seconds",
    "Time the upstream took to answer.",
    ["route", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
TOKENS = Counter("aisix_tokens", "Tokens the upstream reported, by kind (input, output).", ["model", "kind"])
IMAGES = Counter("aisix_images", "Images returned.", ["model"])
COST = Counter("aisix_cost_usd", "Cost of the requests that had a price, in USD.", ["model"])
GUARDRAIL_BLOCKS = Counter("aisix_guardrail_blocks", "Requests a guardrail blocked.", ["guardrail"])
LEDGER_WRITER_UP = Gauge(
    "aisix_ledger_writer_up",
    "0 when a worker's usage ledger writer has stopped (rows wait, unwritten), else 1; a worker "
    "whose writer has not been needed yet counts as 1.",
    multiprocess_mode="livemin",
)
# 1 from the moment a process has the gauge: 0 is for a writer that stopped, not one not yet needed
# (prometheus_client starts every gauge at 0, which paged after every restart).
LEDGER_WRITER_UP.set(1)
STORE_UP = Gauge(
    "aisix_store_up",
    "1 while a store the gateway depends on answers (ledger: the usage database; ratelimit: the "
    "rate limits, budgets and idempotency records), as every worker last saw it; 0 when one did not.",
    ["store"],
    multiprocess_mode="livemin",
)
LEDGER_WRITER_RESTARTS = Counter(
    "aisix_ledger_writer_restarts", "Times a stopped ledger writer was restarted."
)
LEDGER_JOURNAL_ROWS = Gauge(
    "aisix_ledger_journal_rows",
    "Usage rows waiting in the local journal for the ledger's database (the host's journal file, as "
    "a worker last counted it).",
    multiprocess_mode="livemostrecent",
)
LEDGER_ROWS_DROPPED = Counter(
    "aisix_ledger_rows_dropped", "Usage rows the database refused for what they hold (each is logged)."
)
TARGET_COOLDOWNS = Counter(
    "aisix_target_cooldowns",
    "Times a routing target was set to cool down (skipped for a while) after a failure.",
    ["target"],
)
UPSTREAM_ATTEMPTS = Counter(
    "aisix_upstream_attempts",
    "Upstream calls, by target (a direct model row) and outcome (ok, not_sent, "
    "lost_after_sending, http_<status>).",
    ["target", "outcome"],
)
BUDGET_REFUSALS = Counter("aisix_budget_refusals", "Requests refused because a budget was spent.", ["scope"])
RATE_LIMITED = Counter("aisix_rate_limit_rejections", "Requests refused by a rate limit.", ["scope", "limit"])


def observe(row: Any, model: str) -> None:
    """Count one answered request from its ledger row (a ``usage.row.UsageRow``: the metrics sit
    below the usage layer); ``model`` is the configured row's name."""
    _child(REQUESTS, row.route, model, str(row.status)).inc()
    if row.latency_ms is not None:
        _child(LATENCY, row.route, model).observe(row.latency_ms / 1000)
    if row.upstream_latency_ms is not None:
        _child(UPSTREAM_LATENCY, row.route, model).observe(row.upstream_latency_ms / 1000)
    if row.input_tokens:
        _child(TOKENS, model, "input").inc(row.input_tokens)
    if row.output_tokens:
        _child(TOKENS, model, "output").inc(row.output_tokens)
    if row.images:
        _child(IMAGES, model).inc(row.images)
    if row.cost_usd:
        _child(COST, model).inc(row.cost_usd)


@functools.lru_cache(maxsize=4096)  # labels are bounded (see above): routes × model rows × statuses
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once (prometheus_client checks and locks each time)."""
    return metric.labels(*labels)


def exposition() -> tuple[bytes, str]:
    """The text format, summed over every worker when gunicorn runs several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
