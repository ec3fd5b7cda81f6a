"""The process roles: `up` (all of them), `watch`, `worker`, `beat`."""

from __future__ import annotations

import signal
import threading

import click

from contract import running
from contract.queues import CLASSIFY_QUEUE, TRAIN_QUEUE
from contract.settings import Settings
from inbox_classifier.cli_common import (
    BATCHING,
    BROKER,
    INBOX,
    LABELED,
    MODEL,
    WHERE,
    require_broker,
    settings_options,
)
from inbox_classifier.preflight import (
    Refused,
    check_database,
    check_device,
    check_folders,
    check_layout,
    check_redis,
    check_web,
)

UP_EXAMPLES = """\b
Examples:
  inbox-classifier up                          everything, on embedded defaults
  inbox-classifier up --weights none           no download: random weights (to try it out)
  inbox-classifier up --inbox ~/Pictures/drop  watch another folder
Then, in a second terminal in the same folder: `inbox-classifier status`.
"""


@click.command(epilog=UP_EXAMPLES)
@settings_options(role=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Classify workers (default: one per GPU, or 1).",
)
@click.option("--no-trainer", is_flag=True, help="Do not run the `train` queue worker.")
@click.option("--no-beat", is_flag=True, help="Do not run the scheduler.")
@click.option("--no-web", is_flag=True, help="Do not run the web app.")
def up(
    settings: Settings, workers: int | None, no_trainer: bool, no_beat: bool, no_web: bool
) -> None:
    """Run the whole pipeline on this machine: Redis (private, unless --redis-url), the
    ledger (SQLite in the data dir unless --database-url), watcher, workers, beat and the web
    app. The terminal shows the addresses, each worker's busy periods and every warning; each
    process's full output goes to <data dir>/logs/. Ctrl-C stops everything cleanly; queued
    files are picked up at the next start."""
    from inbox_classifier.supervisor import run_pipeline

    raise SystemExit(
        run_pipeline(settings, workers, trainer=not no_trainer, beat=not no_beat, web=not no_web)
    )


@click.command()
@settings_options(only=(*WHERE, *INBOX, *BROKER), role=True)
def watch(settings: Settings) -> None:
    """Watch the inbox: record completed files and enqueue them."""
    from db import migrate
    from watcher.service import run_watcher

    settings = require_broker(settings)
    check_layout(settings)
    check_folders(settings, inbox=True)
    check_database(settings)
    check_redis(settings)
    migrate.upgrade(settings.db_url)
    stop = threading.Event()
    _stop_on_signals(stop)
    with running.recorded(settings, "watcher"):
        run_watcher(settings, stop)


@click.command()
@settings_options(only=(*WHERE, *BROKER, *LABELED, *MODEL, *BATCHING), role=True)
@click.option(
    "--queues",
    default=CLASSIFY_QUEUE,
    show_default=True,
    help=f"Queues to serve: '{CLASSIFY_QUEUE}', '{TRAIN_QUEUE}' or both, comma-separated.",
)
@click.option("--concurrency", type=int, default=None, help="Messages held at once.")
@click.option("--name", default=None, help="Worker node name (default: <queues>@<host>).")
def worker(settings: Settings, queues: str, concurrency: int | None, name: str | None) -> None:
    """Serve the classify queue (batched inference) and/or the train queue.

    One worker per GPU: pin it with CUDA_VISIBLE_DEVICES. The model loads lazily in this
    process on the first batch."""
    from worker.main import WorkerRefused, run_worker

    settings = require_broker(settings)
    wanted = {q.strip() for q in queues.split(",") if q.strip()}
    unknown = wanted - {CLASSIFY_QUEUE, TRAIN_QUEUE}
    if unknown:
        raise click.UsageError(f"unknown queue(s): {', '.join(sorted(unknown))}")
    check_folders(settings, labeled=True)
    check_database(settings)
    check_redis(settings)
    check_device(settings)
    try:
        run_worker(settings, wanted, concurrency, name)
    except WorkerRefused as exc:
        raise Refused(str(exc)) from exc


@click.command()
@settings_options(only=(*WHERE, *BROKER, *INBOX, *LABELED), role=True)
@click.option("--host", default=None, help="Address to bind (default: WEB_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: WEB_PORT.")
def serve(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve the web app alone (for a deployment: it reads the same DB and Redis).

    Off loopback it needs INBOX_CLASSIFIER_WEB_TOKEN; every request must then carry it."""
    from web.server import serve as run_server

    check_web(settings, host)
    check_folders(settings, inbox=True, labeled=True)
    check_database(settings)
    with running.recorded(settings, "web"):
        code = run_server(settings, host, port)
    raise SystemExit(code)


@click.command()
@settings_options(only=(*WHERE, *BROKER), role=True)
def beat(settings: Settings) -> None:
    """Run the scheduler: retraining on its schedule, and the stuck-row reconciler."""
    from broker.app import make_celery

    settings = require_broker(settings)
    check_folders(settings)
    check_redis(settings)
    app = make_celery(settings)
    with running.recorded(settings, "beat"):
        app.start(
            [
                "beat",
                f"--schedule={settings.data_dir / 'celerybeat-schedule'}",
                "--loglevel=INFO",
            ]
        )


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
