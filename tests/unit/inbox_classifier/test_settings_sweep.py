"""Every setting at "", -1, 1e20, inf, nan and abc, for `status`, `results` and `up`: a value that
cannot work is refused at once (exit 2) with one line that names the variable and what it
takes; one that can gets the command's own answer ("no ledger here" in an empty folder). Never
a traceback, and a refused command creates nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from contract.settings import ENV_PREFIX, Settings
from contract.settings_errors import allowed_range
from inbox_classifier.cli import main

VALUES = ["", "-1", "1e20", "inf", "nan", "abc"]
CASES = [(field, value) for field in Settings.model_fields for value in VALUES]


def _accepted(variable: str, value: str) -> bool:
    saved = os.environ.get(variable)
    os.environ[variable] = value
    try:
        Settings()
        return True
    except ValidationError:
        return False
    finally:
        if saved is None:
            del os.environ[variable]
        else:
            os.environ[variable] = saved


@pytest.fixture
def empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("command", ["status", "results"])
def test_every_setting_at_every_bad_value_gets_one_line_for_reading_commands(
    command: str, empty_folder: Path
) -> None:
    runner = CliRunner()
    refused = 0
    for field, value in CASES:
        variable = ENV_PREFIX + field.upper()
        result = runner.invoke(main, [command], env={variable: value})
        said = result.output
        shown = f"{variable}={value!r}"
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            shown,
            said,
        )
        assert "Traceback" not in said, (shown, said)
        # An empty URL is no URL (the default); any other of these values is not a URL.
        a_bad_url = field in ("database_url", "redis_url") and value != ""
        if _accepted(variable, value) and not a_bad_url:
            assert result.exit_code == 1 and "no ledger here" in said, (shown, said)
        else:
            refused += 1
            assert result.exit_code == 2, (shown, result.exit_code, said)
            errors = [line for line in said.splitlines() if line.lower().startswith("error")]
            assert len(errors) == 1 and variable in errors[0], (shown, said)
        assert list(empty_folder.iterdir()) == [], f"{shown} left files behind"
    assert refused > 100  # the sweep reaches the rules, not only the empty-folder answer


def test_up_refuses_every_value_that_cannot_work_before_creating_anything(
    empty_folder: Path,
) -> None:
    runner = CliRunner()
    for field, value in CASES:
        variable = ENV_PREFIX + field.upper()
        if _accepted(variable, value):
            continue  # it would start the pipeline; the reading commands cover these
        result = runner.invoke(main, ["up"], env={variable: value})
        assert result.exit_code == 2, (variable, value, result.output)
        assert variable in result.output and "Traceback" not in result.output
        assert list(empty_folder.iterdir()) == []


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("RETRAIN_INTERVAL_S", "-1", "allowed: 60 or more"),
        ("TORCH_THREADS", "100000000000000000000", "at most 1024"),
        ("QUIET_PERIOD_S", "inf", "finite"),
        ("TRAIN_MOMENTUM", "1", "less than 1"),
        ("MALLOC_ARENAS", "1e20", "allowed: 1 or more, at most 1024 (or null)"),
        ("INBOX", "", "is empty"),
    ],
)
def test_the_line_says_the_allowed_range(variable: str, value: str, words: str) -> None:
    result = CliRunner().invoke(main, ["status"], env={ENV_PREFIX + variable: value})
    assert result.exit_code == 2 and words in result.output, result.output


def test_every_number_setting_has_a_range() -> None:
    numbers = [
        name
        for name, info in Settings.model_fields.items()
        if any(t in str(info.annotation) for t in ("int", "float"))
    ]
    assert numbers and all(allowed_range(name) for name in numbers), [
        n for n in numbers if not allowed_range(n)
    ]
    unbounded = [n for n in numbers if not {"at most", "less than"} & set(_words(n))]
    assert unbounded == [], "a number setting without an upper bound takes 1e20"


def _words(name: str) -> list[str]:
    text = allowed_range(name) or ""
    return [w for w in ("at most", "less than") if w in text]
