"""`results` and `status`: reading the ledger (and the queue) from the command line."""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import active_model
from db.models import ImageStatus
from db.queries import ResultFilter, done_since, status_counts
from db.queries import results as results_query
from inbox_classifier.broker import with_broker
from inbox_classifier.cli_common import settings_options
from inbox_classifier.settings import CLASSIFY_QUEUE, TRAIN_QUEUE, Settings

RESULT_FIELDS = [
    "path",
    "sha256",
    "status",
    "label",
    "confidence",
    "topk",
    "model_version",
    "error",
    "classified_at",
]
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime:
    """'30m', '2h', '7d' (ago) or an ISO date/time (UTC if no zone given)."""
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use e.g. 30m, 2h, 7d or 2026-11-23T08:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


@click.command()
@settings_options
@click.option("--label", help="Only this top label.")
@click.option("--min-confidence", type=click.FloatRange(0, 1))
@click.option("--max-confidence", type=click.FloatRange(0, 1))
@click.option("--status", "status_", type=click.Choice([s.value for s in ImageStatus]))
@click.option("--since", help="Changed since: 30m, 2h, 7d, or an ISO date/time.")
@click.option("--path-glob", help="Shell-style pattern on the full path, e.g. '*/2026/*.jpg'.")
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
    since: str | None,
    path_glob: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """Classification results, one row per file path."""
    filters = ResultFilter(
        label=label,
        min_confidence=min_confidence,
        max_confidence=max_confidence,
        status=status_,
        since=parse_since(since) if since else None,
        path_glob=path_glob,
        limit=limit,
    )
    engine = make_engine(settings.db_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            rows = [
                {
                    "path": path.path,
                    "sha256": image.sha256,
                    "status": image.status,
                    "label": image.label,
                    "confidence": image.confidence,
                    "topk": image.topk or [],
                    "model_version": version.name if version else None,
                    "error": image.error,
                    "classified_at": _iso(image.classified_at),
                }
                for image, path, version in session.execute(results_query(filters))
            ]
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


@click.command()
@settings_options
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
            counts = {s.value: 0 for s in ImageStatus}
            counts.update({state: n for state, n in session.execute(status_counts())})
            recent = session.execute(done_since(timedelta(seconds=window))).scalar_one()
            model = active_model(session)
            active = (
                None
                if model is None
                else {
                    "id": model.id,
                    "name": model.name,
                    "arch": model.arch,
                    "classes": len(model.classes),
                    "val_accuracy": model.val_accuracy,
                }
            )
    finally:
        engine.dispose()
    report: dict[str, Any] = {
        "images": counts,
        "active_model": active,
        "images_per_second": round(recent / window, 2),
        **_queue_report(settings),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo("images:   " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    depth = report["queue_depth"]
    click.echo(
        "queue:    "
        + ("unreachable" if depth is None else "  ".join(f"{k} {v}" for k, v in depth.items()))
    )
    workers = report["workers"]
    click.echo(
        "workers:  " + ("unreachable" if workers is None else (", ".join(workers) or "none"))
    )
    click.echo(
        "model:    "
        + (
            f"{active['name']} (version {active['id']}, {active['classes']} classes)"
            if active
            else "none yet"
        )
    )
    click.echo(f"rate:     {report['images_per_second']} img/s over the last {window}s")


def _queue_report(settings: Settings) -> dict[str, Any]:
    """Queue depths and live workers; None where Redis cannot be reached."""
    settings = with_broker(settings, required=False)
    if not settings.redis_url:
        return {"queue_depth": None, "workers": None}
    import redis

    from worker.app import make_celery

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
        depth = {q: int(client.llen(q)) for q in (CLASSIFY_QUEUE, TRAIN_QUEUE)}
        client.close()
    except redis.RedisError:
        return {"queue_depth": None, "workers": None}
    app = make_celery(settings)
    try:
        replies = app.control.inspect(timeout=1.0).ping() or {}
    except Exception:
        replies = {}
    finally:
        app.close()
    return {"queue_depth": depth, "workers": sorted(replies)}
