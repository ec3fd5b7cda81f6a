"""The CLI as a client of the running system, the way a newcomer drives it: `inbox-classifier
up --weights none` in a folder, then commands in a second terminal in the same folder, with no
flags and no variables. Real processes throughout: up's private Redis and SQLite, its watcher,
classify and train workers, and the CLI commands as subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from contract import running
from contract.settings import ENV_PREFIX, Settings
from db import migrate
from db.engine import make_engine, make_sessionmaker, transaction
from db.models import ModelVersion, RunStatus, TrainingRun
from inbox_classifier.cli import main
from inbox_classifier.cli_common import NO_MODEL_YET
from tests.helpers.pipeline import wait_until
from tests.helpers.training import make_labeled

pytestmark = pytest.mark.timeout(600)

# The trainer's settings: up's own environment, which the client commands never see.
UP_ENV = {
    "INBOX_CLASSIFIER_TRAIN_MODE": "full",
    # Enough epochs that a run is still training when the tests cancel or detach from it.
    "INBOX_CLASSIFIER_TRAIN_EPOCHS": "40",
    "INBOX_CLASSIFIER_TRAIN_PATIENCE": "40",
    "INBOX_CLASSIFIER_TRAIN_BATCH_SIZE": "16",
    "INBOX_CLASSIFIER_VAL_FRACTION": "0.25",
    "INBOX_CLASSIFIER_TORCH_THREADS": "1",
    "INBOX_CLASSIFIER_TORCH_COMPILE": "off",
    "INBOX_CLASSIFIER_INFERENCE_BACKEND": "torch",
    "INBOX_CLASSIFIER_RETRAIN_AFTER_LABELS": "0",
}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class System:
    root: Path
    up: subprocess.Popen[bytes]
    out: Path

    def cli(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        """A command in a second terminal: same folder, none of up's settings."""
        return subprocess.run(
            [sys.executable, "-m", "inbox_classifier", *args],
            cwd=self.root,
            env={**clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as handle:
            return subprocess.Popen(
                [sys.executable, "-m", "inbox_classifier", *args],
                cwd=self.root,
                env=clean_env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def settings(self) -> Settings:
        return Settings(_env_file=None, data_dir=self.root / "var")  # type: ignore[call-arg]

    def run_row(self, run_id: int) -> TrainingRun:
        engine = make_engine(self.settings.db_url)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                row = session.get(TrainingRun, run_id)
                assert row is not None
                session.expunge(row)
                return row
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("newcomer")
    make_labeled(root / "var" / "labeled", per_class=12)
    out = root / "up.out"
    with open(out, "wb") as handle:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inbox_classifier",
                "up",
                "--weights",
                "none",
                "--no-beat",
                "--no-web",
            ],
            cwd=root,
            env={**clean_env(), **UP_ENV},
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    made = System(root, up, out)
    folder = root / "var" / running.FOLDER

    def roles_started() -> bool:
        names = [p.name for p in folder.glob("*.json")] if folder.is_dir() else []
        return all(any(n.startswith(r) for n in names) for r in ("worker-classify", "worker-train"))

    try:
        wait_until(roles_started, 120, "the workers to start\n" + out.read_text(errors="replace"))
        yield made
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def test_status_right_after_up_names_the_base_model(system: System) -> None:
    status = system.cli("status")
    assert status.returncode == 0, status.stderr
    assert "model:    base:resnet18:none (version 1, 1000 classes)" in status.stdout, status.stdout
    listing = system.cli("models")
    assert re.search(r"^1\s+base:resnet18:none\s+1000 classes .* active", listing.stdout, re.M)
    assert "warning" not in status.stderr + listing.stderr  # nothing to reconcile


def test_retrain_wait_trains_on_the_train_worker_with_the_running_settings(
    system: System,
) -> None:
    result = system.cli("retrain", "--wait")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    run_id = int(re.search(r"^run (\d+) queued on the 'train' queue", out, re.M)[1])  # type: ignore[index]
    assert "epoch   1/40" in out and "val loss" in out and "gate: " in out
    ended = re.search(rf"^run {run_id} (promoted|rejected): ", out, re.M)
    assert ended, out
    assert "could not fetch" not in out + result.stderr  # the CLI's default weights unused
    trainer_log = (system.root / "var" / "logs" / "trainer.log").read_text(errors="replace")
    assert f"training run {run_id} {ended[1]}" in trainer_log  # the train worker ran it
    row = system.run_row(run_id)
    assert row.status == ended[1] and row.trigger == "manual"
    assert len((row.progress or {})["epoch_log"]) == 40  # every epoch, for any reader


def test_ctrl_c_detaches_without_cancelling_and_the_run_finishes(
    system: System, tmp_path: Path
) -> None:
    log = tmp_path / "wait.out"
    follower = system.start("retrain", "--wait", "--force", log=log)
    wait_until(lambda: "epoch   1/40" in log.read_text(), 180, "the first epoch\n" + str(log))
    follower.send_signal(signal.SIGINT)
    assert follower.wait(30) == 130
    printed = log.read_text()
    run_id = int(re.search(r"^run (\d+) queued", printed, re.M)[1])  # type: ignore[index]
    assert f"detached: run {run_id} goes on on the train worker" in printed
    assert f"retrain --follow {run_id}" in printed
    again = system.cli("retrain", "--follow", str(run_id))
    assert re.search(rf"^run {run_id} (promoted|rejected): ", again.stdout, re.M), again.stdout
    assert system.run_row(run_id).status in (RunStatus.PROMOTED, RunStatus.REJECTED)


def test_cancel_stops_a_running_run_cleanly(system: System) -> None:
    def active() -> int:
        engine = make_engine(system.settings.db_url)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                from db.versions import active_model

                row = active_model(session)
                assert row is not None
                return row.id
        finally:
            engine.dispose()

    before = active()
    queued = system.cli("retrain", "--force")
    run_id = int(queued.stdout.split()[1])
    wait_until(lambda: (system.run_row(run_id).progress or {}).get("epoch", 0) >= 1, 180, "epoch 1")
    cancelled = system.cli("retrain", "--cancel", str(run_id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"run {run_id} was asked to stop" in cancelled.stdout
    assert re.search(
        rf"^run {run_id} cancelled: cancelled by request after epoch \d", cancelled.stdout, re.M
    )
    row = system.run_row(run_id)
    assert row.status == RunStatus.CANCELLED and row.model_version_id is None
    assert active() == before  # nothing promoted
    assert len((row.progress or {})["epoch_log"]) < 40
    # Cancelling again says it already ended, and changes nothing.
    again = system.cli("retrain", "--cancel", str(run_id))
    assert "already ended: cancelled" in again.stdout


def test_a_command_whose_settings_differ_from_the_running_system_says_so(
    system: System,
) -> None:
    result = system.cli("models", INBOX_CLASSIFIER_MODEL="resnet50")
    assert result.returncode == 0, result.stderr
    assert "warning: this command's settings differ from the running system's" in result.stderr
    assert re.search(
        r"model: resnet50 here, resnet18 in (up|worker-\S+) \(pid \d+\)", result.stderr
    )
    # What it did not choose, it takes from the running system (no warning for those).
    assert "weights" not in result.stderr


# --- without up -----------------------------------------------------------------------------


def test_before_any_worker_status_and_models_say_the_same(tmp_path: Path) -> None:
    data = tmp_path / "var"
    data.mkdir()
    migrate.upgrade(Settings(_env_file=None, data_dir=data).db_url)  # type: ignore[call-arg]
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--data-dir", str(data)])
    models = runner.invoke(main, ["models", "--data-dir", str(data)])
    assert f"model:    {NO_MODEL_YET}" in status.output
    assert f"model versions: {NO_MODEL_YET}" in models.output


def test_a_queued_run_is_cancelled_at_once(tmp_path: Path) -> None:
    from db import runs

    s = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    migrate.upgrade(s.db_url)
    engine = make_engine(s.db_url)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions) as session:
            run_id = runs.create_queued(session)
        with transaction(sessions) as session:
            outcome = runs.request_cancel(session, run_id)
        assert outcome is not None and outcome.status == RunStatus.CANCELLED
        with transaction(sessions) as session:
            # The worker that takes the message later finds the run finished.
            _, done = runs.claim(session, run_id, "manual")
            assert done is not None and done.status == RunStatus.CANCELLED
            assert session.query(ModelVersion).count() == 0
    finally:
        engine.dispose()


def test_each_subcommand_offers_only_the_options_it_uses() -> None:
    runner = CliRunner()
    results = runner.invoke(main, ["results", "--help"]).output
    for flag in ("--batch-size", "--model", "--weights", "--device", "--redis-url", "--inbox"):
        assert flag not in results, flag
    assert "--database-url" in results and "--label" in results
    status = runner.invoke(main, ["status", "--help"]).output
    assert "--redis-url" in status and "--weights" not in status
    worker = runner.invoke(main, ["worker", "--help"]).output
    assert "--weights" in worker and "--batch-size" in worker and "--inbox" not in worker
    retrain = runner.invoke(main, ["retrain", "--help"]).output
    assert "Examples:" in retrain and "retrain --wait" in retrain and "--cancel" in retrain


def test_adopted_and_differing_values_from_a_record(tmp_path: Path) -> None:
    """contract.running on its own: a record written by a (this) live process."""
    theirs = Settings(_env_file=None, data_dir=tmp_path, weights="none", device="cpu")  # type: ignore[call-arg]
    path = running.record(theirs, "up")
    try:
        records = running.running(theirs)
        assert [r.role for r in records] == ["up"]
        plain = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
        adopted = running.adopt(plain, records)
        assert (adopted.weights, adopted.device) == ("none", "cpu")
        assert running.differences(adopted, records) == []
        mine = Settings(_env_file=None, data_dir=tmp_path, weights="imagenet")  # type: ignore[call-arg]
        found = running.differences(running.adopt(mine, records), records)
        assert [(d.name, d.ours, d.theirs) for d in found] == [("weights", "imagenet", "none")]
    finally:
        running.forget(path)
    assert running.running(theirs) == []


def test_a_record_keeps_no_password_and_a_dead_process_record_is_dropped(tmp_path: Path) -> None:
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, database_url="postgresql://u:secret@db/x"
    )
    path = running.record(s, "web")
    text = path.read_text()
    assert "secret" not in text and "u:***@db" in text
    dead = path.with_name("watcher.999999999.json")
    dead.write_text(text.replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    assert [r.role for r in running.running(s)] == ["web"]
    assert not dead.exists()
    running.forget(path)
