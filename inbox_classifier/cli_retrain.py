"""``inbox-classifier retrain``: a training run on the running system's train worker (the
``train`` queue), followed from this terminal with ``--wait`` or ``--follow``, stopped with
``--cancel``; or, with ``--here``, trained in this process on a machine with no workers.

Following reads the run's row in the ledger (the events the web app shows: phases, every
epoch, warnings, the report and the gate's verdict), so it needs no connection to the worker
and can detach (Ctrl-C) and come back. Importing this module imports no torch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import click

from contract.messages import Trigger
from contract.queues import TRAIN_QUEUE
from contract.reports import ProgressEvent, TrainingReport
from contract.settings import Settings
from db import runs, versions
from db.engine import transaction
from db.models import RunStatus

if TYPE_CHECKING:
    from pipeline.retrain import Requested
from inbox_classifier.cli_common import (
    BROKER,
    LABELED,
    MODEL,
    WHERE,
    ledger,
    require_broker,
    settings_options,
)

POLL_S = 0.5  # how often a follower reads the run's row
NO_WORKER_HINT_S = 15.0  # queued this long: say what takes the run
CANCEL_WAIT_S = 600.0  # --cancel waits this long for the run to stop

EXAMPLES = """\b
Examples:
  inbox-classifier retrain              queue a run on the train worker
  inbox-classifier retrain --wait       queue it and follow it to the gate's verdict
  inbox-classifier retrain --follow 7   follow run 7 (again, after Ctrl-C)
  inbox-classifier retrain --cancel 7   stop run 7; nothing from it is promoted
  inbox-classifier retrain --here --weights none   no workers: train in this process
"""


class _Printer:
    """Turns training progress events into lines on the terminal."""

    PHASES = {
        "scanning": "scanning {labeled}",
        "features": "computing backbone features ({feature_passes} pass(es), cached)",
        "gate": "scoring {compared_with} on the same held-out images",
        "saving": "saving the model files",
        "serving": "building its ONNX Runtime artifacts (fp32, int8 checked against fp32)",
    }

    def __init__(self) -> None:
        self.phase = ""
        self.warning = ""

    def __call__(self, event: ProgressEvent) -> None:
        kind = event.get("event")
        warning = event.get("last_warning")
        if warning and warning != self.warning:
            self.warning = warning
            click.secho(f"  warning: {warning}", fg="yellow", err=True)
        if kind == "epoch":
            planned = event.get("epochs")
            of = f"/{planned}" if isinstance(planned, int) and planned >= event["epoch"] else ""
            click.echo(
                f"  epoch {event['epoch']:>3}{of}  "
                f"train loss {event['train_loss']:.4f} acc {event['train_acc']:.3f}  "
                f"val loss {event['val_loss']:.4f} acc {event['val_acc']:.3f}  "
                f"({event['seconds']:.1f}s)"
            )
            return
        phase = str(event.get("phase", ""))
        if kind != "phase" or phase == self.phase:
            return
        self.phase = phase
        if phase == "preparing":
            click.echo(
                f"{len(event['classes'])} classes, {event['train_images']} training / "
                f"{event['val_images']} validation images; mode {event['mode']}"
            )
        elif phase == "gate" and not event.get("compared_with"):
            click.echo("scoring the candidate on the held-out images (no trained model to beat)")
        elif phase in self.PHASES:
            try:
                click.echo(self.PHASES[phase].format(**event))
            except KeyError:
                click.echo(phase)


def _print_report(report: TrainingReport, settings: Settings) -> None:
    version: dict[str, Any] = dict(report.get("version") or {})
    click.echo(
        f"\n{version.get('name', 'candidate')}: val accuracy {report['accuracy']:.3f} on "
        f"{report['val_images']} images (best epoch {report['best_epoch']} of "
        f"{report['epochs_run']}, {report['duration_s'].get('total', 0):.1f}s, "
        f"{report['device']} {report['autocast']}; {report['started_from']})"
    )
    for name, acc in report["per_class_accuracy"].items():
        counts = report["images_per_class"][name]
        shown = "  -  " if acc is None else f"{acc:.3f}"
        click.echo(f"  {name:<24} {shown}   ({counts['train']} train / {counts['val']} val)")
    if report.get("skipped_corrupt"):
        click.echo(f"  skipped {report['skipped_corrupt']} corrupt image(s)")
    if report.get("stopped_early"):
        patience = dict(report.get("config") or {}).get("patience", "?")
        click.echo(f"stopped early: no better validation accuracy for {patience} epochs")
    elif report.get("stopped_by_budget"):
        click.echo(
            f"stopped by the budget: {report['epochs_run']} epochs fit TRAIN_BUDGET_S "
            f"({report.get('budget_s')} s)"
        )
    gate = report["gate"]
    click.echo(f"gate: {gate['reason']}")
    if "id" in version:
        click.echo(
            f"report: {settings.models_path / str(version['id'])}/"
            "{report.json, curves.png, val_grid.png}"
        )


@click.command("retrain", epilog=EXAMPLES)
@click.option(
    "--wait",
    is_flag=True,
    help="Queue the run and follow it: each epoch, the report and the gate's verdict. "
    "Ctrl-C detaches; the run goes on.",
)
@click.option(
    "--follow", "follow_id", type=int, metavar="RUN", help="Follow run RUN as --wait does."
)
@click.option(
    "--cancel",
    "cancel_id",
    type=int,
    metavar="RUN",
    help="Stop run RUN cleanly at its next epoch (or at once, if no worker took it yet).",
)
@click.option(
    "--here",
    is_flag=True,
    help="Train in this process, not on a train worker (a machine with no workers); "
    "the model flags apply only to it.",
)
@click.option("--force", is_flag=True, help="Train even if the labeled data is unchanged.")
@click.option("--fresh", is_flag=True, help="Start from the base model, not the active one.")
@settings_options(only=(*WHERE, *BROKER, *LABELED, *MODEL))
def retrain(
    settings: Settings,
    wait: bool,
    follow_id: int | None,
    cancel_id: int | None,
    here: bool,
    force: bool,
    fresh: bool,
) -> None:
    """Learn from the labeled folders on the train worker; the gate promotes the result if it
    is good enough. Prints the run's id; --wait follows it."""
    chosen = [
        name
        for name, on in (
            ("--wait", wait),
            ("--follow", follow_id is not None),
            ("--cancel", cancel_id is not None),
            ("--here", here),
        )
        if on
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of {', '.join(chosen)}")
    if cancel_id is not None:
        raise SystemExit(_cancel(settings, cancel_id))
    if follow_id is not None:
        raise SystemExit(_follow(settings, follow_id))
    if here:
        raise SystemExit(_train_here(settings, force, fresh))
    asked = _send_retrain(settings, force, fresh)
    run_id = asked.run_id
    queued = (
        f"run {run_id} queued on the '{TRAIN_QUEUE}' queue"
        if asked.new
        else f"run {run_id} was queued or running already (one manual run at a time)"
    )
    if wait:
        click.echo(f"{queued}; following it (Ctrl-C detaches, the run goes on)")
        raise SystemExit(_follow(settings, run_id))
    click.echo(
        f"{queued}: `inbox-classifier retrain --follow {run_id}` follows it, "
        f"`--cancel {run_id}` stops it"
    )


def _send_retrain(settings: Settings, force: bool, fresh: bool) -> Requested:
    from broker.app import NoBroker, make_celery
    from pipeline.retrain import NotSent, request_retrain

    try:
        app = make_celery(require_broker(settings))
    except click.ClickException as exc:
        raise click.UsageError(
            f"{exc.message} (or use --here to train in this process)"
        ) from exc
    except NoBroker as exc:
        raise click.UsageError(f"{exc} (or use --here to train in this process)") from exc
    with ledger(settings) as sessions:
        try:
            return request_retrain(sessions, app, force=force, fresh=fresh)
        except NotSent as exc:
            raise click.ClickException(str(exc)) from exc


def _follow(settings: Settings, run_id: int) -> int:
    """Print run ``run_id``'s progress from its row until it ends; the exit code."""
    printer = _Printer()
    phases = epochs = 0
    hinted = False
    started = time.monotonic()
    with ledger(settings) as sessions:
        try:
            while True:
                with transaction(sessions) as session:
                    view = runs.get(session, run_id)
                if view is None:
                    raise click.ClickException(f"no training run {run_id}")
                progress = view.progress
                for phase in progress.get("phase_log", [])[phases:]:
                    printer(cast(ProgressEvent, {**progress, "event": "phase", "phase": phase}))
                phases = len(progress.get("phase_log", []))
                for record in progress.get("epoch_log", [])[epochs:]:
                    event = {"event": "epoch", "epochs": progress.get("epochs"), **record}
                    printer(cast(ProgressEvent, event))
                epochs = len(progress.get("epoch_log", []))
                printer(cast(ProgressEvent, {**progress, "event": "snapshot"}))  # warnings
                if view.status != RunStatus.RUNNING:
                    break
                queued = progress.get("phase") == runs.QUEUED
                if queued and not hinted and time.monotonic() - started > NO_WORKER_HINT_S:
                    hinted = True
                    click.echo(
                        "  still waiting for a training worker: is `inbox-classifier up` (or "
                        f"`inbox-classifier worker --queues {TRAIN_QUEUE}`) running?"
                    )
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            click.echo(
                f"\ndetached: run {run_id} goes on on the train worker; `inbox-classifier "
                f"retrain --follow {run_id}` follows it again, `--cancel {run_id}` stops it"
            )
            return 130
        report = None
        if view.model_version_id is not None:
            with transaction(sessions) as session:
                report = versions.report(session, view.model_version_id)
    if report is not None:
        _print_report(cast(TrainingReport, report), settings)
    return _print_end(run_id, view.status, view.message or "")


def _print_end(run_id: int | None, status: str, message: str) -> int:
    colour: dict[str, str] = {
        RunStatus.PROMOTED: "green",
        RunStatus.REJECTED: "yellow",
        RunStatus.FAILED: "red",
        RunStatus.CANCELLED: "yellow",
    }
    click.secho(f"run {run_id} {status}: {message}", fg=colour.get(status))
    return 1 if status in (RunStatus.FAILED, RunStatus.CANCELLED) else 0


def _cancel(settings: Settings, run_id: int) -> int:
    with ledger(settings) as sessions:
        with transaction(sessions) as session:
            outcome = runs.request_cancel(session, run_id)
        if outcome is None:
            raise click.ClickException(f"no training run {run_id}")
        if outcome.status != RunStatus.RUNNING:
            click.echo(outcome.message)
            return 0 if outcome.status == RunStatus.CANCELLED else 1
        click.echo(f"{outcome.message}; it stops at its next epoch (Ctrl-C: stop waiting)")
        deadline = time.monotonic() + CANCEL_WAIT_S
        try:
            while time.monotonic() < deadline:
                with transaction(sessions) as session:
                    view = runs.get(session, run_id)
                if view is not None and view.status != RunStatus.RUNNING:
                    _print_end(run_id, view.status, view.message or "")
                    return 0 if view.status == RunStatus.CANCELLED else 1
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            click.echo(f"\nstopped waiting; run {run_id} will still stop")
            return 130
    click.echo(f"run {run_id} has not stopped yet; `inbox-classifier status` shows it")
    return 1


def _train_here(settings: Settings, force: bool, fresh: bool) -> int:
    from worker.model.precision import pick_device
    from worker.training.run import run_training

    click.echo("training here, in this process (--here), not on a train worker, with:")
    click.echo(
        f"  model {settings.model}, weights {settings.weights}, device {settings.device} "
        f"({pick_device(settings.device)})"
    )
    click.echo(f"  labeled dir {settings.labeled_path}, data dir {settings.data_dir}")
    with ledger(settings) as sessions:
        outcome = run_training(
            settings,
            sessions,
            trigger=Trigger.MANUAL,
            force=force,
            fresh=fresh,
            on_progress=_Printer(),
        )
    if outcome.report is not None:
        _print_report(outcome.report, settings)
    return _print_end(outcome.run_id, outcome.status, outcome.message)
