"""`results` and `status`: reading the ledger (and the queue) from the command line."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from typing import Any

import click

from broker.locate import with_broker
from broker.stats import queue_report
from contract.serving import describe_serving
from contract.settings import Settings
from db.engine import make_engine, make_sessionmaker, transaction
from db.models import ImageStatus
from db.queries import ResultFilter, ResultRow, ledger_status, result_rows
from inbox_classifier.cli_common import BROKER, NO_MODEL_YET, WHERE, Since, settings_options

RESULT_FIELDS = list(ResultRow.__slots__)


@click.command(
    epilog="""\b
Examples:
  inbox-classifier results --label tabby --min-confidence 0.9
  inbox-classifier results --status failed
  inbox-classifier results --needs-review --since 2h --format csv > review.csv
"""
)
@settings_options(only=WHERE)
@click.option("--label", help="Only this top label.")
@click.option("--min-confidence", type=click.FloatRange(0, 1))
@click.option("--max-confidence", type=click.FloatRange(0, 1))
@click.option("--status", "status_", type=click.Choice([s.value for s in ImageStatus]))
@click.option("--since", type=Since(), help="Changed since: 30m, 2h, 7d, or an ISO date/time.")
@click.option("--path-glob", help="Shell-style pattern on the full path, e.g. '*/2026/*.jpg'.")
@click.option(
    "--needs-review",
    is_flag=True,
    help="Only images whose set of likely classes (COVERAGE) is not one class.",
)
@click.option(
    "--sure", is_flag=True, help="Only images at their class's TARGET_PRECISION threshold."
)
@click.option("--limit", type=click.IntRange(min=1))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
def results(
    settings: Settings,
    label: str | None,
    min_confidence: float | None,
    max_confidence: float | None,
    status_: str | None,
    since: datetime | None,
    path_glob: str | None,
    needs_review: bool,
    sure: bool,
    limit: int | None,
    fmt: str,
) -> None:
    """Classification results, one row per file path."""
    filters = ResultFilter(
        label=label,
        min_confidence=min_confidence,
        max_confidence=max_confidence,
        status=status_,
        since=since,
        path_glob=path_glob,
        needs_review=True if needs_review else None,
        sure=True if sure else None,
        limit=limit,
    )
    engine = make_engine(settings.db_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            rows = [row.to_dict() for row in result_rows(session, filters)]
    finally:
        engine.dispose()
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
    engine = make_engine(settings.db_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            ledger_part = ledger_status(session, window)
    finally:
        engine.dispose()
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
