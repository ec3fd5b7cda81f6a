"""CLI for the model versions: ``models`` (list / promote / rollback) and ``reclassify``
(``retrain`` is in :mod:`inbox_classifier.cli_retrain`, ``label`` in
:mod:`inbox_classifier.cli_labels`). Registered on the main ``inbox-classifier`` group by
inbox_classifier.cli.

Importing this module imports no torch: training code loads only when a command needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from broker.app import NoBroker, make_celery
from broker.locate import BrokerNotFound, with_broker
from contract.calibration import Calibration
from contract.clock import as_utc
from contract.serving import ServingRecord, describe_serving
from contract.settings import Settings
from db import quality, versions
from db.engine import transaction
from db.models import ModelStatus, ModelVersion
from inbox_classifier.cli_common import (
    BROKER,
    NO_MODEL_YET,
    WHERE,
    Since,
    ledger,
    settings_options,
)

# --- models ----------------------------------------------------------------------------------


def _merged(ctx: click.Context, settings: Settings) -> Settings:
    """Settings for a ``models`` subcommand: flags given to ``models`` itself apply unless
    the subcommand's own flags override them."""
    parent = (ctx.find_object(dict) or {}).get("settings")
    if not isinstance(parent, Settings):
        return settings
    plain = Settings()
    changed = {
        name: getattr(settings, name)
        for name in Settings.model_fields
        if getattr(settings, name) != getattr(plain, name)
    }
    return parent.model_copy(update=changed)


def _classes_text(classes: Sequence[Any]) -> str:
    names = [str(c) for c in classes]
    if len(names) <= 5:
        return ",".join(names)
    return f"{len(names)} classes"


def _per_class_text(per_class: dict[str, Any] | None) -> str:
    if not per_class:
        return "-"
    items = [(str(c), a) for c, a in per_class.items()]
    if len(items) > 6:  # the weakest ones are what matter
        items = sorted(items, key=lambda x: (x[1] is None, x[1] if x[1] is not None else 0))[:4]
        prefix = "worst: "
    else:
        prefix = ""
    return prefix + " ".join(f"{c}={'-' if a is None else f'{a:.2f}'}" for c, a in items)


def _created_text(moment: datetime | None) -> str:
    return "-" if moment is None else as_utc(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _quality_lines(version: ModelVersion, found: quality.Quality | None, bound: float) -> list[str]:
    """What ``models --long`` says of a version's calibration and its production."""
    lines = []
    calibration = Calibration.from_dict(version.calibration)
    report = dict((version.report or {}).get("calibration") or {})
    if version.calibration:
        ece = report.get("ece_before"), report.get("ece_after")
        text = f"calibration: T {calibration.temperature:.3g}"
        if ece[0] is not None and ece[1] is not None:
            text += f", ECE {ece[0]:.3f} -> {ece[1]:.3f}"
        if calibration.set_threshold is not None:
            text += (
                f", sets at {calibration.coverage:.0%} coverage from p >= "
                f"{calibration.set_threshold:.3f}"
            )
        text += f", {len(calibration.class_thresholds)} class threshold(s)"
        lines.append(text)
    else:
        lines.append("calibration: none (a base model: no validation set; T = 1)")
    lines.append("serving: " + describe_serving(ServingRecord.from_dict(version.serving)))
    if found is not None and found.predictions:
        drift = "-" if found.confidence_drift is None else f"{found.confidence_drift:.2f}"
        mix = "-" if found.class_mix_drift is None else f"{found.class_mix_drift:.2f}"
        review = "-" if found.needs_review_share is None else f"{found.needs_review_share:.1%}"
        warn = "  DRIFTED" if found.drifted(bound) else ""
        lines.append(
            f"production: {found.predictions} predictions, confidence drift {drift} "
            f"(warn > {bound:g}), class-mix drift {mix}, needs review {review}{warn}"
        )
        worst = sorted(found.corrections.items(), key=lambda kv: -kv[1].rate)[:5]
        if worst:
            lines.append(
                "corrected by people: "
                + ", ".join(f"{k} {c.corrected}/{c.labeled}" for k, c in worst)
            )
    return lines


def _list_versions(settings: Settings, long: bool) -> None:
    with ledger(settings) as sessions, transaction(sessions) as session:
        rows = versions.all_versions(session)
        held_out = {
            p.version_id: p for p in versions.latest_scores(versions.score_history(session))
        }
        details = {
            v.id: _quality_lines(v, quality.version_quality(session, v.id), settings.drift_warn)
            for v in rows
            if long
        }
        table = [
            (
                str(v.id),
                v.name,
                _classes_text(v.classes),
                "-" if v.val_accuracy is None else f"{v.val_accuracy:.3f}",
                _held_out_text(held_out.get(v.id)),
                _per_class_text(v.per_class_accuracy),
                v.status,
                _created_text(v.created_at),
                v.reason or "",
            )
            for v in rows
        ]
    if not table:
        click.echo(f"model versions: {NO_MODEL_YET}")
        return
    header = (
        "ID",
        "NAME",
        "CLASSES",
        "VAL ACC",
        "HELD-OUT ACC",
        "PER-CLASS ACC",
        "STATUS",
        "CREATED (UTC)",
    )
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in table:
        line = "  ".join(c.ljust(w) for c, w in zip(row[:8], widths, strict=True)).rstrip()
        click.secho(line, bold=row[6] == ModelStatus.ACTIVE)
        if long and row[8]:
            click.echo(f"    {row[8]}")
        for detail in details.get(int(row[0]), []):
            click.echo(f"    {detail}")


def _held_out_text(score: versions.ScoreView | None) -> str:
    """A version's latest score on the held-out images: accuracy (right/images)."""
    if score is None:
        return "-"
    return f"{score.accuracy:.3f} ({score.correct}/{score.images})"


long_option = click.option(
    "--long",
    "long_",
    is_flag=True,
    help="Also print why each was promoted/rejected, its calibration, how it is served "
    "(backend, int8 check) and production drift.",
)


@click.group(
    "models",
    invoke_without_command=True,
    epilog="""\b
Examples:
  inbox-classifier models --long
  inbox-classifier models promote 3
  inbox-classifier models rollback
""",
)
@long_option
@settings_options(only=WHERE)
@click.pass_context
def models(ctx: click.Context, settings: Settings, long_: bool) -> None:
    """Model versions: list them (default), promote one, or roll back."""
    ctx.ensure_object(dict)["settings"] = settings
    if ctx.invoked_subcommand is None:
        _list_versions(settings, long_)


@models.command("list")
@long_option
@settings_options(only=WHERE)
@click.pass_context
def list_models(ctx: click.Context, settings: Settings, long_: bool) -> None:
    """List model versions: id, name, classes, accuracy, status, created."""
    _list_versions(_merged(ctx, settings), long_)


def _switch(settings: Settings, version_id: int | None, verb: str) -> None:
    """A promote or a rollback, by the rules the web app uses too (pipeline.models)."""
    from pipeline.errors import UseCaseError
    from pipeline.models import switch

    with ledger(settings) as sessions:
        try:
            switched = switch(sessions, version_id, verb)
        except UseCaseError as exc:
            raise click.ClickException(str(exc)) from exc
    if not switched.changed:
        click.echo(f"{switched.active} is already active")
        return
    click.echo(
        f"{switched.active} is now active (was {switched.previous}); workers switch to it "
        f"within {settings.model_check_interval_s:g}s"
    )


@models.command("promote")
@click.argument("version_id", type=int)
@settings_options(only=WHERE)
@click.pass_context
def promote(ctx: click.Context, settings: Settings, version_id: int) -> None:
    """Make model version VERSION_ID the active one (even one the gate rejected)."""
    _switch(_merged(ctx, settings), version_id, "promoted")


@models.command("rollback")
@settings_options(only=WHERE)
@click.pass_context
def rollback(ctx: click.Context, settings: Settings) -> None:
    """Make the previously active model version active again."""
    _switch(_merged(ctx, settings), None, "rolled back")


# --- reclassify --------------------------------------------------------------------------------


@click.command("reclassify")
@click.option(
    "--below-confidence",
    type=click.FloatRange(0, 1),
    default=None,
    help="Only images whose current confidence is below this.",
)
@click.option("--label", default=None, help="Only images currently labeled this.")
@click.option(
    "--since", type=Since(), default=None, help="Only images classified since: 2h, 7d or ISO time."
)
@click.option(
    "--older-version",
    is_flag=True,
    help="Only images classified by a model version older than the active one.",
)
@click.option("--dry-run", is_flag=True, help="Count the matching images; change nothing.")
@settings_options(only=(*WHERE, *BROKER))
def reclassify(
    settings: Settings,
    below_confidence: float | None,
    label: str | None,
    since: datetime | None,
    older_version: bool,
    dry_run: bool,
) -> None:
    """Classify done images again with the active model (older predictions stay as history)."""
    from pipeline.enqueue import PartlySent
    from pipeline.rescore import Selection, rescore, select

    with ledger(settings) as sessions:
        with transaction(sessions) as session:
            active = versions.active_model(session)
            if active is None:
                raise click.ClickException("no active model yet: start a worker or train one")
            name = active.name
        which = Selection(
            active.id,
            below_confidence=below_confidence,
            label=label,
            since=since,
            older_version=older_version,
        )
        if dry_run:
            found = select(sessions, which)
            click.echo(
                f"{len(found)} image(s) match; active model is {name} (dry run: nothing changed)"
            )
            return
        try:
            items, sent = rescore(
                make_celery(with_broker(settings)), sessions, which, settings.files_per_message
            )
        except (PartlySent, BrokerNotFound, NoBroker) as exc:
            raise click.ClickException(
                f"images set back to queued, but the broker is unreachable ({exc}); the "
                "reconciler will send them once it is back"
            ) from exc
    if not items:
        click.echo(f"0 image(s) match; active model is {name}")
        return
    click.echo(f"{len(items)} image(s) queued for {name} in {sent.messages} message(s)")


# --- label -------------------------------------------------------------------------------------
