"""`results` and `status`: reading the ledger (and the queue) from the command line."""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable
from typing import Any, cast

import click
from pydantic import ValidationError

from broker.locate import with_broker
from broker.stats import queue_report
from contract.filters import ResultFilters
from contract.serving import describe_serving
from contract.settings import Settings
from db.engine import transaction
from db.models import ImageStatus
from db.queries import ResultRow, ledger_status, result_rows
from inbox_classifier.cli_common import BROKER, NO_MODEL_YET, WHERE, ledger, settings_options

RESULT_FIELDS = list(ResultRow.__slots__)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per field of :class:`contract.filters.ResultFilters` (the API and the
    Browse page read the same declaration): ``--label``, ``--min-confidence``, ``--status``,
    ``--needs-review/--no-needs-review``...; the command gets ``filters: ResultFilters``."""
    fields = ResultFilters.model_fields

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in fields if kwargs.get(name) is not None}
        try:
            filters = ResultFilters(**given)
        except ValidationError as exc:
            problems = "; ".join(
                "--{}: {}".format(
                    str(e["loc"][0]).replace("_", "-"),
                    str(e["msg"]).removeprefix("Value error, "),
                )
                for e in exc.errors()
            )
            raise click.UsageError(problems) from None
        for name in fields:
            kwargs.pop(name, None)
        return command(*args, filters=filters, **kwargs)

    decorated: Any = wrapper
    for name, field in reversed(list(fields.items())):
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        if kind == bool | None:
            option = click.option(
                f"{flag}/--no-{flag[2:]}", name, default=None, help=field.description
            )
        elif kind == ImageStatus | None:
            option = click.option(
                flag,
                name,
                type=click.Choice([s.value for s in ImageStatus]),
                help=field.description,
            )
        elif kind == float | None:
            option = click.option(flag, name, type=click.FloatRange(0, 1), help=field.description)
        else:
            option = click.option(flag, name, type=str, help=field.description)
        decorated = option(decorated)
    return cast(Callable[..., Any], decorated)


@click.command(
    epilog="""\b
Examples:
  inbox-classifier results --label tabby --min-confidence 0.9
  inbox-classifier results --status failed
  inbox-classifier results --needs-review --since 2h --format csv > review.csv
"""
)
@settings_options(only=WHERE)
@filter_options
@click.option("--limit", type=click.IntRange(min=1))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
def results(settings: Settings, filters: ResultFilters, limit: int | None, fmt: str) -> None:
    """Classification results, one row per file path."""
    with ledger(settings) as sessions, transaction(sessions) as session:
        rows = [row.to_dict() for row in result_rows(session, filters, limit)]
    _print_rows(rows, fmt)


def _print_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "topk": json.dumps(row["topk"], ensure_ascii=False)})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for name in ("path", "status", "label", "confidence", "model", "error"):
            table.add_column(name, overflow="fold")
        for row in rows:
            confidence = row["confidence"]
            table.add_row(
                row["path"],
                row["status"],
                row["label"] or "",
                f"{confidence:.3f}" if confidence is not None else "",
                row["model_version"] or "",
                row["error"] or "",
            )
        Console().print(table)
        click.echo(f"{len(rows)} row(s)")


@click.command(
    epilog="""\b
Examples:
  inbox-classifier status
  inbox-classifier status --json | jq .images
"""
)
@settings_options(only=(*WHERE, *BROKER))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Seconds over which img/s is measured.",
)
def status(settings: Settings, as_json: bool, window: int) -> None:
    """Counts by state, queue depth, workers, the active model and throughput."""
    with ledger(settings) as sessions, transaction(sessions) as session:
        ledger_part = ledger_status(session, window)
    queues = queue_report(with_broker(settings, required=False))
    if as_json:
        report = {
            **ledger_part.to_dict(),
            "queue_depth": queues.depth,
            "workers": queues.workers,
        }
        click.echo(json.dumps(report, indent=2))
        return
    active = ledger_part.active_model
    click.echo("images:   " + "  ".join(f"{k} {v}" for k, v in ledger_part.images.items()))
    depth = queues.depth
    click.echo(
        "queue:    "
        + ("unreachable" if depth is None else "  ".join(f"{k} {v}" for k, v in depth.items()))
    )
    workers = queues.workers
    click.echo(
        "workers:  " + ("unreachable" if workers is None else (", ".join(workers) or "none"))
    )
    click.echo(
        "model:    "
        + (
            f"{active.name} (version {active.id}, {active.classes} classes)"
            if active
            else NO_MODEL_YET
        )
    )
    if active:
        click.echo("serving:  " + describe_serving(active.serving))
    click.echo(f"rate:     {ledger_part.images_per_second} img/s over the last {window}s")
