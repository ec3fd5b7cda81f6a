"""Shared CLI plumbing: the options that override Settings, how commands receive them, the
ledger a command reads, and turning the lower layers' errors into messages."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from broker.locate import BrokerNotFound, with_broker
from contract import running
from contract.clock import parse_since
from contract.settings import Settings
from contract.settings_errors import dotenv_names, settings_problems, unknown_variables
from db.engine import has_schema, make_engine, make_sessionmaker
from db.errors import DATABASE_ERRORS, unavailable_reason
from inbox_classifier.lifeline import follow_supervisor
from inbox_classifier.preflight import MISCONFIGURED, check_urls

F = TypeVar("F", bound=Callable[..., Any])

#: What `status` and `models` say before any model is registered: one wording for both.
NO_MODEL_YET = "none yet: a classify worker registers the base model when it starts"

# (flag, Settings field, click type, help). Unset flags leave env/.env/defaults in force.
_OVERRIDES: list[tuple[str, str, Any, str]] = [
    ("--data-dir", "data_dir", click.Path(path_type=Path), "Data directory (DB, models, Redis)."),
    ("--inbox", "inbox", str, "Folder to watch, or s3://bucket/prefix (a bucket)."),
    ("--labeled-dir", "labeled_dir", click.Path(path_type=Path), "Labeled training folders."),
    ("--database-url", "database_url", str, "SQLAlchemy URL (default: SQLite in data dir)."),
    ("--redis-url", "redis_url", str, "Redis URL (default for `up`: a private Redis)."),
    ("--model", "model", str, "torchvision model name, e.g. resnet18, resnet50."),
    ("--weights", "weights", str, "'imagenet', 'none', or a weights file path."),
    ("--device", "device", str, "'auto', 'cpu' or 'cuda'."),
    ("--batch-size", "batch_size", int, "Largest inference batch."),
    ("--batch-wait-ms", "batch_wait_ms", int, "Longest wait for a batch to fill."),
]


# Which overrides a command offers: only those it uses.
WHERE = ("data_dir", "database_url")
BROKER = ("redis_url",)
INBOX = ("inbox",)
LABELED = ("labeled_dir",)
MODEL = ("model", "weights", "device")
BATCHING = ("batch_size", "batch_wait_ms")
EVERYTHING = tuple(field for _, field, _, _ in _OVERRIDES)


def settings_options(
    func: F | None = None, *, only: Sequence[str] = EVERYTHING, role: bool = False
) -> Any:
    """Add the Settings override flags named in ``only`` to a command and pass it
    ``settings: Settings``. A command that is not a ``role`` (a client of the running system,
    e.g. ``status``) adopts the running system's model, weights, device and labeled dir where
    it did not choose them, and warns where it chose them otherwise (:mod:`contract.running`).
    Usable bare (``@settings_options``: every flag) or called."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = {}
            for field in only:
                value = kwargs.pop(field, None)
                if value is not None:
                    overrides[field] = value
            verbose = kwargs.pop("verbose", False)
            configure_logging(verbose)
            settings = read_settings(overrides)
            check_urls(settings)
            if role:
                follow_supervisor()  # started by `up`: die with it
            else:
                settings = agree_with_running(settings)
            try:
                return command(*args, settings=settings, **kwargs)
            except DATABASE_ERRORS as exc:
                # The database refused (unreachable, read-only, locked): one line, no traceback.
                reason = unavailable_reason(exc)
                if reason is None:
                    raise
                raise click.ClickException(reason) from None

        decorated: Any = wrapper
        decorated = click.option("-v", "--verbose", is_flag=True, help="Debug logging.")(decorated)
        for flag, field, kind, help_text in reversed(_OVERRIDES):
            if field in only:
                option = click.option(flag, field, type=kind, default=None, help=help_text)
                decorated = option(decorated)
        return cast(F, decorated)

    return decorate(func) if func is not None else decorate


def read_settings(overrides: dict[str, Any]) -> Settings:
    """The settings, once: flags over variables over ``.env`` over defaults. Bad values stop
    the command (exit 2) with a line per variable; unknown variables get a warning."""
    for warning in unknown_variables({**dotenv_names(), **os.environ}):
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        flags = {field: flag for flag, field, _, _ in _OVERRIDES if field in overrides}
        for line in settings_problems(exc, flags):
            click.secho(f"error: {line}", fg="red", err=True)
        raise SystemExit(MISCONFIGURED) from None


def agree_with_running(settings: Settings) -> Settings:
    """``settings`` as the running system in its data dir has them (where this command did not
    choose otherwise), with a warning on stderr for each value it did choose otherwise."""
    records = running.running(settings)
    if not records:
        return settings
    settings = running.adopt(settings, records)
    found = running.differences(settings, records)
    if found:
        click.secho(
            f"warning: this command's settings differ from the running system's in "
            f"{settings.data_dir}:",
            fg="yellow",
            err=True,
        )
        for item in found:
            click.secho(
                f"  {item.name}: {item.ours} here, {item.theirs} in {item.role} (pid {item.pid})",
                fg="yellow",
                err=True,
            )
        click.secho(
            "  this command uses its own; drop the flag or variable (or set the same value) "
            "to act on what is running",
            fg="yellow",
            err=True,
        )
    return settings


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


#: How a command that reads the ledger says there is none where it looked.
NO_LEDGER = "no ledger here ({where}): run `inbox-classifier up` in this folder, or set DATA_DIR"


@contextmanager
def ledger(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured ledger, which must exist already: a command that only reads
    creates nothing (no empty results.db, no folder) where there is none."""
    from contract.layout import sqlite_file

    database = sqlite_file(settings)
    if database is not None and not database.is_file():
        raise click.ClickException(NO_LEDGER.format(where=f"no {database}"))
    engine = make_engine(settings.db_url)
    try:
        try:
            ready = has_schema(engine)
        except DATABASE_ERRORS as exc:
            reason = unavailable_reason(exc) or f"{type(exc).__name__}: {exc}"
            raise click.ClickException(reason) from None
        if not ready:
            raise click.ClickException(NO_LEDGER.format(where=f"{_shown_url(settings)} is empty"))
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _shown_url(settings: Settings) -> str:
    return running.mask(settings.db_url) if settings.database_url else settings.db_url


#: How long a command waits for an `up` that is starting to have its Redis up.
STARTING_UP_WAIT_S = 120.0


def require_broker(settings: Settings, wait_s: float = STARTING_UP_WAIT_S) -> Settings:
    """``settings`` with the broker URL of a running `up` filled in; while an `up` in this
    data dir is still starting, wait for it (saying so); a clear error if none runs."""
    from inbox_classifier.lifeline import DataDirLock

    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return with_broker(settings)
        except BrokerNotFound as exc:
            if not DataDirLock.held(settings.data_dir) or time.monotonic() > deadline:
                raise click.ClickException(str(exc)) from exc
            if not said:
                click.secho(
                    f"`up` is starting in {settings.data_dir}; waiting for it...", err=True
                )
                said = True
            time.sleep(0.25)
