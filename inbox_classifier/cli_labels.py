"""``label``: a person's label from the terminal, as the web app gives it (pipeline.labels).
Imports what the command uses only when it runs."""

from __future__ import annotations

import os
import re

import click

from contract.settings import Settings
from inbox_classifier.cli_common import BROKER, LABELED, WHERE, ledger, settings_options


@click.command(
    "label",
    epilog="""\b
Examples:
  inbox-classifier label inbox/2026/img_0042.jpg tabby
  inbox-classifier label inbox/2026/img_0043.jpg lynx --new-class
  inbox-classifier label inbox/2026/img_0042.jpg --undo
""",
)
@click.argument("image")
@click.argument("class_name", metavar="CLASS", required=False)
@click.option("--undo", is_flag=True, help="Remove IMAGE's human label instead.")
@click.option("--reviewer", default=None, help="Who labeled it (kept in the label history).")
@click.option(
    "--new-class",
    is_flag=True,
    help="CLASS is meant to start a new class (a label that is no known class is refused "
    "without it: a typo would otherwise become a class).",
)
@settings_options(only=(*WHERE, *BROKER, *LABELED))
def label(
    settings: Settings,
    image: str,
    class_name: str | None,
    undo: bool,
    reviewer: str | None,
    new_class: bool,
) -> None:
    """Give IMAGE (a path in the inbox, or a sha256) the label CLASS, as the web app does: the
    label wins over the model's, the image becomes a training example in labeled/CLASS/, and
    the label that completes RETRAIN_AFTER_LABELS queues a retrain."""
    from broker.app import make_celery
    from broker.locate import with_broker
    from contract.paths import shown
    from db import labels
    from db.engine import transaction
    from pipeline.labels import LabelError, apply_label, remove_label

    if class_name is None and not undo:
        raise click.UsageError("say which class: `inbox-classifier label IMAGE CLASS`")
    with ledger(settings) as sessions:
        sha = image.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", image) else None
        if sha is None:
            with transaction(sessions) as session:
                sha = labels.sha_for_path(session, os.path.abspath(image))
            if sha is None:
                raise click.ClickException(f"{shown(image)}: not a path the ledger has seen")
        try:
            if undo or class_name is None:
                remove_label(settings, sessions, sha)
            else:
                done = apply_label(
                    settings,
                    sessions,
                    sha,
                    class_name,
                    reviewer,
                    broker=lambda: make_celery(with_broker(settings)),
                    new_class=new_class,
                )
        except LabelError as exc:
            hint = "; add --new-class to start it" if exc.new_class else ""
            raise click.ClickException(f"{exc}{hint}") from exc
    if undo:
        click.echo(f"{sha[:12]}: label removed")
        return
    click.echo(f"{sha[:12]}: labeled {done.label!r}; training copy {done.file}")
    if done.retrain_run is not None:
        click.echo(
            f"{settings.retrain_after_labels} new labels: training run {done.retrain_run} "
            f"queued (`inbox-classifier retrain --follow {done.retrain_run}`)"
        )
