"""Shared CLI plumbing: the options that override Settings, how commands receive them, the
ledger a command reads, and turning the lower layers' errors into messages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from sqlalchemy.orm import Session, sessionmaker

from broker.locate import BrokerNotFound, with_broker
from contract.clock import parse_since
from contract.settings import Settings
from db.engine import has_schema, make_engine, make_sessionmaker

F = TypeVar("F", bound=Callable[..., Any])

# (flag, Settings field, click type, help). Unset flags leave env/.env/defaults in force.
_OVERRIDES: list[tuple[str, str, Any, str]] = [
    ("--data-dir", "data_dir", click.Path(path_type=Path), "Data directory (DB, models, Redis)."),
    ("--inbox", "inbox", click.Path(path_type=Path), "Folder to watch."),
    ("--labeled-dir", "labeled_dir", click.Path(path_type=Path), "Labeled training folders."),
    ("--database-url", "database_url", str, "SQLAlchemy URL (default: SQLite in data dir)."),
    ("--redis-url", "redis_url", str, "Redis URL (default for `up`: a private Redis)."),
    ("--model", "model", str, "torchvision model name, e.g. resnet18, resnet50."),
    ("--weights", "weights", str, "'imagenet', 'none', or a weights file path."),
    ("--device", "device", str, "'auto', 'cpu' or 'cuda'."),
    ("--batch-size", "batch_size", int, "Largest inference batch."),
    ("--batch-wait-ms", "batch_wait_ms", int, "Longest wait for a batch to fill."),
]


def settings_options(func: F) -> F:
    """Add the Settings override flags to a command and pass it ``settings: Settings``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {}
        for _, field, _, _ in _OVERRIDES:
            value = kwargs.pop(field, None)
            if value is not None:
                overrides[field] = value
        verbose = kwargs.pop("verbose", False)
        configure_logging(verbose)
        try:
            settings = Settings(**overrides)
        except Exception as exc:  # pydantic's ValidationError, with field names
            raise click.UsageError(f"invalid settings: {exc}") from exc
        return func(*args, settings=settings, **kwargs)

    decorated: Any = wrapper
    decorated = click.option("-v", "--verbose", is_flag=True, help="Debug logging.")(decorated)
    for flag, field, kind, help_text in reversed(_OVERRIDES):
        decorated = click.option(flag, field, type=kind, default=None, help=help_text)(decorated)
    return cast(F, decorated)


# Every process logs in this format; `up` reads its children's records back by it
# (inbox_classifier.console).
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


class Since(click.ParamType):
    """'30m', '2h', '7d' (ago) or an ISO date/time."""

    name = "since"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@contextmanager
def ledger(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured ledger, which must exist already."""
    engine = make_engine(settings.db_url)
    try:
        if not has_schema(engine):
            raise click.ClickException(
                f"no ledger at {settings.db_url}: run `inbox-classifier db upgrade` first"
            )
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def require_broker(settings: Settings) -> Settings:
    """``settings`` with the broker URL of a running `up` filled in; a clear error if none."""
    try:
        return with_broker(settings)
    except BrokerNotFound as exc:
        raise click.ClickException(str(exc)) from exc
