"""``suspects`` and ``near-duplicates``: the mistakes a person cannot see, from the terminal
(pipeline.suspects and pipeline.near_duplicates, as the web app has them). Imports what a
command uses only when it runs."""

from __future__ import annotations

import json

import click

from contract.settings import Settings
from inbox_classifier.cli_common import LABELED, WHERE, ledger, settings_options


@click.command(
    "suspects",
    epilog="""\b
Examples:
  inbox-classifier suspects --limit 20
  inbox-classifier suspects --format json | jq -r '.[].path'
""",
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@settings_options(only=(*WHERE, *LABELED))
def suspects(settings: Settings, limit: int, fmt: str) -> None:
    """Labeled images whose label the model doubts, most suspect first: after each training
    run, every image in labeled/ gets a probability from a head that never trained on it;
    SCORE is 1 - the probability of its given LABEL, SUGGESTED what the model would say.
    Decide on them on the web app's Suspects page (keep, relabel, remove)."""
    from dataclasses import asdict

    from db import suspects as store
    from db.engine import transaction

    with ledger(settings) as sessions, transaction(sessions) as session:
        rows = store.suspects(session, limit)
        run_id = store.latest_run(session)
    if fmt == "json":
        click.echo(json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False))
        return
    if run_id is None:
        click.secho(
            "no suspects yet: a training run scores the labels (inbox-classifier retrain)",
            fg="yellow",
            err=True,
        )
        return
    click.echo(f"{'SCORE':>6}  {'LABEL':<16} {'SUGGESTED':<16} {'SPLIT':<7} PATH (under labeled/)")
    for r in rows:
        click.echo(
            f"{r.score:6.3f}  {r.label[:16]:<16} {(r.suggested or '')[:16]:<16} {r.split:<7} "
            f"{r.path}"
        )
    click.echo(f"{len(rows)} suspect(s) from training run {run_id}")


@click.command(
    "near-duplicates",
    epilog="""\b
Examples:
  inbox-classifier near-duplicates
  inbox-classifier near-duplicates --format json | jq '.groups | length'
""",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@settings_options(only=(*WHERE, *LABELED))
def near_duplicates(settings: Settings, fmt: str) -> None:
    """Groups of near-duplicates among the classified images (the same picture re-saved,
    resized or lightly cropped), by their perceptual hashes and a threshold calibrated on this
    ledger's own images. The groups are stored: Browse filters by them."""
    from pipeline import near_duplicates as use_case
    from pipeline.errors import UseCaseError

    with ledger(settings) as sessions:
        try:
            result = use_case.refresh(settings, sessions)
        except UseCaseError as exc:
            raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(use_case.as_dict(result), indent=2))
        return
    for number, group in enumerate(result.groups, start=1):
        click.echo(f"group {number}: {' '.join(group)}")
    click.echo(
        f"{len(result.groups)} group(s) among {result.images:,} images in {result.seconds:.1f} s; "
        f"threshold {result.threshold}"
    )
    if result.pending:
        click.echo(
            f"{result.pending:,} images not compared yet: run it again (or let the web app's "
            "background passes) to compare them"
        )
