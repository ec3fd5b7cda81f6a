"""The `inbox-classifier` console script: thin commands over the role packages.

Each command lives in the module named for what it holds and is imported only when it runs:
``inbox-classifier --help`` loads click and this table, not SQLAlchemy, Celery, pydantic or
torch (``tests/project/test_cli_imports.py`` checks which modules a fresh interpreter loads;
docs/performance.md has the times).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from inbox_classifier import __version__

#: name -> (module:attribute, the one-line help the group's --help shows without importing it).
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("inbox_classifier.cli_roles:up", "Run the whole pipeline on this machine."),
    "watch": ("inbox_classifier.cli_roles:watch", "Watch the inbox: record and enqueue files."),
    "worker": ("inbox_classifier.cli_roles:worker", "Serve the classify and/or train queue."),
    "beat": ("inbox_classifier.cli_roles:beat", "Run the scheduler: retraining, reconciling."),
    "serve": ("inbox_classifier.cli_roles:serve", "Serve the web app alone."),
    "db": ("inbox_classifier.cli_db:db", "Database schema (Alembic migrations)."),
    "results": ("inbox_classifier.cli_query:results", "Classification results, one row per path."),
    "status": ("inbox_classifier.cli_query:status", "Counts, queue, workers, model, throughput."),
    "label": ("inbox_classifier.cli_labels:label", "Give an image a human label (or --undo)."),
    "retrain": ("inbox_classifier.cli_retrain:retrain", "Train on labeled/ now; --wait to watch."),
    "models": ("inbox_classifier.cli_models:models", "Model versions: list, promote, rollback."),
    "suspects": ("inbox_classifier.cli_mistakes:suspects", "Labels in labeled/ the model doubts."),
    "near-duplicates": (
        "inbox_classifier.cli_mistakes:near_duplicates",
        "Groups of the same picture under other bytes.",
    ),
    "reclassify": (
        "inbox_classifier.cli_models:reclassify",
        "Classify images again with the active model.",
    ),
}


class LazyGroup(click.Group):
    """Commands imported on first use; the group's help lists them from :data:`COMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = COMMANDS.get(cmd_name)
        if found is None:
            return None
        module, _, attribute = found[0].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="inbox-classifier")
def main(**_: Any) -> None:
    """Drop images into a folder; get labels and confidences in SQL.

    Every option can also be set as an environment variable INBOX_CLASSIFIER_<NAME>
    (e.g. INBOX_CLASSIFIER_WEIGHTS=none) or in a .env file.
    """
