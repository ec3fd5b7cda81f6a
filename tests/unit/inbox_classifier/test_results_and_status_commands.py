"""`results` and `status` through the real CLI, over a real SQLite ledger."""

from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner

from contract.records import Classified, Failed
from contract.settings import Settings
from db.batch_write import save_results
from db.engine import transaction
from db.versions import ensure_base_model
from inbox_classifier.cli import main
from tests.helpers.images import write_images
from tests.helpers.pipeline import record


def _populate(settings: Settings, session_factory) -> list[str]:
    paths = write_images(settings.inbox, 4)
    items = record(session_factory, paths)
    with transaction(session_factory) as session:
        base = ensure_base_model(session, "resnet18", "none", ["tabby", "dog"])
        save_results(
            session,
            base.id,
            [
                Classified(
                    items[0].sha256, "tabby", 0.95, [{"label": "tabby", "confidence": 0.95}]
                ),
                Classified(
                    items[1].sha256, "tabby", 0.40, [{"label": "tabby", "confidence": 0.40}]
                ),
                Classified(items[2].sha256, "dog", 0.99, [{"label": "dog", "confidence": 0.99}]),
            ],
            [Failed(items[3].sha256, "corrupt or truncated image")],
        )
    return [str(p) for p in paths]


def _run(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(
        main, [*args, "--database-url", settings.db_url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_results_json_filters(settings: Settings, session_factory) -> None:
    paths = _populate(settings, session_factory)
    rows = json.loads(
        _run(settings, "results", "--format", "json", "--label", "tabby", "--min-confidence", "0.8")
    )
    assert [r["path"] for r in rows] == [paths[0]]
    row = rows[0]
    assert set(row) >= {
        "path",
        "sha256",
        "status",
        "label",
        "confidence",
        "topk",
        "model_version",
        "error",
        "classified_at",
    }
    assert row["status"] == "done" and row["model_version"] == "base:resnet18:none"
    assert row["topk"] == [{"label": "tabby", "confidence": 0.95}]

    failed = json.loads(_run(settings, "results", "--format", "json", "--status", "failed"))
    assert [(r["path"], r["error"]) for r in failed] == [(paths[3], "corrupt or truncated image")]

    below = json.loads(_run(settings, "results", "--format", "json", "--max-confidence", "0.5"))
    assert [r["path"] for r in below] == [paths[1]]
    assert len(json.loads(_run(settings, "results", "--format", "json", "--limit", "2"))) == 2
    assert json.loads(_run(settings, "results", "--format", "json", "--since", "1h"))
    assert json.loads(_run(settings, "results", "--format", "json", "--since", "2999-01-01")) == []


def test_since_out_of_range_is_a_usage_error_not_a_traceback(settings: Settings) -> None:
    result = CliRunner().invoke(
        main, ["results", "--since", "99999999d", "--database-url", settings.db_url]
    )
    assert result.exit_code == 2, result.output
    assert "reaches back before the year 1" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_results_path_glob_is_a_bound_pattern(settings: Settings, session_factory) -> None:
    paths = _populate(settings, session_factory)
    glob = json.loads(
        _run(settings, "results", "--format", "json", "--path-glob", "*img_00002.jpg")
    )
    assert [r["path"] for r in glob] == [paths[2]]
    # SQL in a filter is data, not code.
    hostile = _run(settings, "results", "--format", "json", "--label", "x' OR '1'='1")
    assert json.loads(hostile) == []


def test_results_csv_and_table(settings: Settings, session_factory) -> None:
    _populate(settings, session_factory)
    reader = list(csv.DictReader(io.StringIO(_run(settings, "results", "--format", "csv"))))
    assert len(reader) == 4 and json.loads(reader[0]["topk"])[0]["label"] == "tabby"
    table = _run(settings, "results")
    assert "tabby" in table and "4 row(s)" in table


def test_status_counts_queue_and_model(settings: Settings, session_factory) -> None:
    _populate(settings, session_factory)
    out = json.loads(_run(settings, "status", "--json", "--redis-url", settings.redis_url or ""))
    assert out["images"] == {"queued": 0, "done": 3, "failed": 1}
    assert out["queue_depth"] == {"classify": 0, "train": 0}
    assert out["workers"] == []
    assert out["active_model"]["name"] == "base:resnet18:none"
    assert out["images_per_second"] > 0


def test_no_rows_say_why_and_offer_the_labels_the_ledger_has(
    settings: Settings, session_factory
) -> None:
    _populate(settings, session_factory)
    result = CliRunner().invoke(
        main, ["results", "--label", "Tabby", "--database-url", settings.db_url]
    )
    assert result.exit_code == 0, result.output
    assert "Did you mean 'tabby'?" in result.output and "Labels here: " in result.output
    reviewing = CliRunner().invoke(
        main, ["results", "--needs-review", "--database-url", settings.db_url]
    )
    assert "flags nothing for review" in reviewing.output, reviewing.output


def test_status_says_up_is_not_running_instead_of_unreachable(
    settings: Settings, session_factory
) -> None:
    _populate(settings, session_factory)
    result = CliRunner().invoke(
        main,
        ["status", "--data-dir", str(settings.data_dir), "--database-url", settings.db_url],
        env={"INBOX_CLASSIFIER_REDIS_URL": ""},
    )
    assert result.exit_code == 0, result.output
    assert "up is not running here" in result.output and "unreachable" not in result.output


def test_a_table_row_stays_on_one_line_at_80_columns(settings: Settings, session_factory) -> None:
    deep = settings.inbox / "a" / "very" / "long" / "path" / "that" / "wraps" / "at" / "eighty"
    write_images(deep, 1)
    _populate(settings, session_factory)
    result = CliRunner().invoke(
        main, ["results", "--database-url", settings.db_url], env={"COLUMNS": "80"}
    )
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 4, result.output  # one line per row, however long its path
    assert all(len(line) <= 80 for line in rows)
