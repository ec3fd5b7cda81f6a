"""`results` and `status`: reading the ledger (and the queue) from the command line."""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, cast

import click
from pydantic import ValidationError
from sqlalchemy.orm import Session

from contract.filters import ResultFilters
from contract.running import mask
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
        hint = _empty_hint(session, filters) if not rows else None
    _print_rows(rows, fmt)
    if hint:
        click.secho(hint, fg="yellow", err=True)


def _empty_hint(session: Session, filters: ResultFilters) -> str | None:
    """Why a query found nothing, where the ledger can say: the labels it does have (and the
    one the user may have meant), or a model that flags nothing for review."""
    import difflib

    from db.browse import label_counts
    from db.versions import active_model

    if filters.label is not None:
        labels = [name for name, _ in label_counts(session, limit=50)]
        if not labels:
            return "no rows: no image has a label yet"
        folded = {name.casefold(): name for name in labels}
        close = [folded[m] for m in difflib.get_close_matches(filters.label.casefold(), folded)]
        shown = ", ".join(labels[:12]) + (" ..." if len(labels) > 12 else "")
        meant = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"no rows with label {filters.label!r} (labels are exact).{meant} Labels here: "
            f"{shown}"
        )
    if filters.needs_review:
        active = active_model(session)
        if active is not None and not active.calibration:
            return (
                f"no rows: {active.name} flags nothing for review; 'needs review' comes from a "
                "trained version's calibration (teach it your classes and retrain)"
            )
    return None


def _keep_end(text: str, width: int) -> str:
    """``text`` cut at its start where longer than ``width``: a path's end names its file."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _relative(path: str, here: str) -> str:
    return path[len(here) :] if path.startswith(here) else path


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

        here = os.getcwd() + os.sep
        cells = [
            (
                _relative(str(row["path"]), here),
                row["status"],
                row["label"] or "",
                f"{row['confidence']:.3f}" if row["confidence"] is not None else "",
                row["model_version"] or "",
                row["error"] or "",
            )
            for row in rows
        ]
        console = Console()
        short = [
            min(24, max([len(name), *(len(cell[index]) for cell in cells)]))
            for index, name in enumerate(("status", "label", "confidence", "model"), start=1)
        ]
        # One line per row at any width: the short columns keep their width (up to 24
        # characters), the path (keeping its end, the file's name) and the error share the
        # rest, cut with an ellipsis; csv and json have every character.
        rest = max(20, console.width - sum(short) - 3 * 6 - 1)
        table = Table(show_lines=False)
        table.add_column("path", no_wrap=True, overflow="ellipsis", max_width=rest * 2 // 3)
        for name, width in zip(("status", "label", "confidence", "model"), short, strict=True):
            table.add_column(name, no_wrap=True, overflow="ellipsis", width=width)
        table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=rest // 3)
        path_width = min(rest * 2 // 3, max([4, *(len(cell[0]) for cell in cells)]))
        for path, *others in cells:
            table.add_row(_keep_end(path, path_width), *others)
        console.print(table)
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
    from broker.locate import url_file, with_broker
    from broker.stats import queue_report

    with ledger(settings) as sessions, transaction(sessions) as session:
        ledger_part = ledger_status(session, window)
    located = with_broker(settings, required=False)
    queues = queue_report(located)
    # No Redis configured and no private one of a running `up`: nothing runs here.
    stopped = located.redis_url is None
    if as_json:
        report = {
            **ledger_part.to_dict(),
            "queue_depth": queues.depth,
            "workers": queues.workers,
            "up_running": not stopped if not settings.redis_url else None,
        }
        click.echo(json.dumps(report, indent=2))
        return
    active = ledger_part.active_model
    click.echo("images:   " + "  ".join(f"{k} {v}" for k, v in ledger_part.images.items()))
    depth = queues.depth
    if stopped:
        queue_text = (
            f"up is not running here (no private Redis in {url_file(settings).parent}); "
            "start `inbox-classifier up`"
        )
    elif depth is None:
        queue_text = f"unreachable ({mask(located.redis_url or '')})"
    else:
        queue_text = "  ".join(f"{k} {v}" for k, v in depth.items())
    click.echo("queue:    " + queue_text)
    workers = queues.workers
    workers_text = "none" if stopped else "unreachable" if workers is None else ", ".join(workers)
    click.echo("workers:  " + (workers_text or "none"))
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
