"""``flask aisix …``: check-config and hash-key."""

from __future__ import annotations

import os
import secrets

import click
from flask import Flask

from .config import ConfigError, hash_key, load_config


@click.group("aisix")
def aisix() -> None:
    """aisix-flask gateway tools."""


@aisix.command("check-config")
@click.argument("path", required=False)
def check_config(path: str | None) -> None:
    """Validate a config file offline (default: $AISIX_CONFIG or ./config.yaml)."""
    path = path or os.environ.get("AISIX_CONFIG", "config.yaml")
    try:
        registry = load_config(path)
    except ConfigError as e:
        click.echo(f"{path}: {len(e.problems)} problem(s)", err=True)
        for problem in e.problems:
            click.echo(f"  error: {problem}", err=True)
        raise SystemExit(1) from None
    for warning in registry.warnings:
        click.echo(f"  warning: {warning}", err=True)
    click.echo(
        f"{path}: OK ({len(registry.provider_keys)} provider keys, "
        f"{len(registry.router)} models, {len(registry.api_keys)} api keys, "
        f"{len(registry.guardrails)} guardrails, {len(registry.warnings)} warnings)"
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


def init_app(app: Flask) -> None:
    """Register the ``aisix`` command group."""
    app.cli.add_command(aisix)
