"""The `inbox-classifier` console script: thin commands over the role packages. Importing it
loads no torch: each command imports what it runs when it runs."""

from __future__ import annotations

import click

from inbox_classifier import __version__
from inbox_classifier.cli_db import db
from inbox_classifier.cli_pipeline import beat, serve, up, watch, worker
from inbox_classifier.cli_query import results, status
from inbox_classifier.cli_retrain import retrain
from inbox_classifier.cli_training import label, models, reclassify


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="inbox-classifier")
def main() -> None:
    """Drop images into a folder; get labels and confidences in SQL.

    Every option can also be set as an environment variable INBOX_CLASSIFIER_<NAME>
    (e.g. INBOX_CLASSIFIER_WEIGHTS=none) or in a .env file.
    """


for command in (
    up,
    watch,
    worker,
    beat,
    serve,
    db,
    results,
    status,
    label,
    retrain,
    models,
    reclassify,
):
    main.add_command(command)
