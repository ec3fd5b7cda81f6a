"""`inbox-classifier db ...`: schema migrations."""

from __future__ import annotations

import click

from contract.settings import Settings
from db import migrate
from inbox_classifier.cli_common import WHERE, settings_options


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@settings_options(only=WHERE, role=True)
@click.option("--revision", default="head", show_default=True)
def upgrade(settings: Settings, revision: str) -> None:
    """Create or upgrade the schema (`up` does this automatically)."""
    migrate.upgrade(settings.db_url, revision)
    click.echo(f"database at revision {migrate.current(settings.db_url)}")


@db.command()
@settings_options(only=WHERE, role=True)
def current(settings: Settings) -> None:
    """Print the schema revision."""
    click.echo(migrate.current(settings.db_url) or "empty (run `inbox-classifier db upgrade`)")
