"""``flask aisix …``: check-config, hash-key, the usage report, the ledger's journal and the budgets."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from collections.abc import Sequence
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup

from .config import ConfigError, hash_key, load_config
from .gateway import Gateway, current
from .policy.budgets import configured
from .usage.display import format_usd
from .usage.journal import JournalError
from .usage.report import SUMMARY_GROUPS, parse_since
from .usage.table import display_url

aisix = AppGroup("aisix", help="aisix-flask gateway tools.")


@aisix.command("check-config")
@click.argument("path", required=False)
def check_config(path: str | None) -> None:
    """Validate a config file offline (default: $AISIX_CONFIG or ./config.yaml)."""
    path = path or os.environ.get("AISIX_CONFIG", "config.yaml")
    try:
        config = load_config(path)
    except ConfigError as e:
        click.echo(f"{path}: {len(e.problems)} problem(s)", err=True)
        for problem in e.problems:
            click.echo(f"  error: {problem}", err=True)
        raise SystemExit(1) from None
    for warning in config.warnings:
        click.echo(f"  warning: {warning}", err=True)
    click.echo(
        f"{path}: OK ({len(config.provider_keys)} provider keys, "
        f"{len(config.router)} models, {len(config.api_keys)} api keys, "
        f"{len(config.guardrails)} guardrails, {len(config.warnings)} warnings)"
    )


@aisix.command("hash-key")
@click.argument("key", required=False)
@click.option("--new", is_flag=True, help="Generate a new random key and print it with its hash.")
def hash_key_command(key: str | None, new: bool) -> None:
    """Print the key_hash (SHA-256) of a caller key; prompts for the key when none is given."""
    if new:
        key = "sk-aisix-" + secrets.token_urlsafe(32)
        click.echo(f"key:      {key}")
        click.echo(f"key_hash: {hash_key(key)}")
        return
    if key is None:
        key = click.prompt("Key", hide_input=True)
    click.echo(hash_key(key))


COLUMNS = ("requests", "errors", "images", "input_tokens", "output_tokens", "total_tokens", "cost_usd")


@aisix.command("usage")
@click.option("--since", default="7d", show_default=True, help="7d, 24h, 30m or an ISO-8601 time.")
@click.option("--by", type=click.Choice(SUMMARY_GROUPS), default="model", show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
def usage_report(since: str, by: str, fmt: str) -> None:
    """Requests, errors, images, tokens and cost per API key, model, target, route or day, from the ledger."""
    try:
        start = parse_since(since)
    except ValueError:
        raise click.BadParameter("use 7d, 24h, 30m or an ISO-8601 time", param_hint="--since") from None
    rows = _opened_gateway().ledger.summary(since=start, by=by)
    click.echo(render(rows, by, fmt), nl=False)


@aisix.command("budgets")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def budgets_report(fmt: str) -> None:
    """Every budget's limit, spend, remaining and period end (UTC)."""
    gateway = _opened_gateway()
    rows = gateway.budgets.status(configured(gateway.config()))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("scope", "name", "period", "usd", "spent", "remaining", "period_end")
    cells = [[str(r["usd"]) if h == "usd" else _budget_cell(r[h]) for h in header] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *cells, strict=True)]
    click.echo("".join(_line(line, widths) for line in (header, *cells)), nl=False)


ledger = AppGroup("ledger", help="The usage ledger's database and its local journal.")
aisix.add_command(ledger)


@ledger.command("status")
def ledger_status() -> None:
    """Whether the ledger's database answers, and how many rows wait in the journal."""
    usage = _opened_gateway().ledger
    answers = usage.ping()
    journal = usage.journal
    try:
        waiting, others = journal.count(), journal.others()
    except JournalError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"database: {display_url(usage.url)} ({'answers' if answers else 'does not answer'})")
    click.echo(f"journal:  {journal.path}")
    click.echo(f"waiting:  {waiting} rows")
    for database, rows in others.items():
        click.echo(f"          and {rows} rows for another gateway's database, {database}")


@ledger.command("replay")
def ledger_replay() -> None:
    """Write the rows waiting in the journal to the database now (a running gateway does this by
    itself as soon as the database answers)."""
    usage = _opened_gateway().ledger
    written = 0
    try:
        while True:
            done = usage.replay_journal(budget_s=5.0)
            written += done.rows
            if done.emptied or not done.reached or not done.rows:
                break
    except JournalError as e:
        raise click.ClickException(str(e)) from None
    left = usage.journal_rows()
    click.echo(f"replayed {written} rows; {left} wait in {usage.journal.path}")
    if not done.emptied:
        reason = "the database does not answer" if not done.reached else "another process is replaying it"
        raise click.ClickException(f"the journal is not empty: {reason}")


def _opened_gateway() -> Gateway:
    """The gateway, or the command fails saying the config is broken."""
    gateway = current()
    if gateway.request_config() is None:
        raise click.ClickException("the config is broken; run `flask --app wsgi aisix check-config`")
    return gateway


def _budget_cell(value: object) -> str:
    """A budget table cell: a spend in USD (a small one not shown as zero), a date, or never."""
    if value is None:
        return "never"
    return format_usd(value) if isinstance(value, float) else str(value)


def render(rows: list[dict[str, Any]], by: str, fmt: str) -> str:
    """The report as an aligned table, CSV or JSON."""
    header = (by, *COLUMNS)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[row[h] if row[h] is not None else "" for h in header] for row in rows])
        return out.getvalue()
    cells = [[_cell(row[h], h) for h in header] for row in rows]
    totals = ["total", *(_cell(_total(rows, h), h) for h in COLUMNS)]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *cells, totals, strict=True)]
    return "".join(_line(line, widths) for line in (header, *cells, totals))


def _line(cells: Sequence[object], widths: list[int]) -> str:
    """The first column left-aligned, numbers right-aligned."""
    parts = [
        str(x).ljust(w) if i == 0 else str(x).rjust(w)
        for i, (x, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip() + "\n"


def _total(rows: list[dict[str, Any]], column: str) -> float | int | None:
    """The column's sum (None when every row's is None); not rounded: _cell writes it."""
    values = [row[column] for row in rows if row[column] is not None]
    return sum(values) if values else None


def _cell(value: object, column: str) -> str:
    """A report table cell: a cost in USD (a small one not shown as zero), a count or a name."""
    if value is None:
        return "-" if column == "cost_usd" else "(none)"
    return format_usd(value) if column == "cost_usd" and isinstance(value, int | float) else str(value)


def init_app(app: Flask) -> None:
    """Register the ``aisix`` command group."""
    app.cli.add_command(aisix)
