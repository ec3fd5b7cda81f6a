"""The learning loop's CLI through click's CliRunner, against the real Redis and SQLite of the
fixtures: retrain (--here, and queued), models (list / promote / rollback), reclassify. The
retrain that a train worker runs, followed with --wait, is in
tests/integration/test_cli_with_a_running_system.py."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from contract.messages import RetrainRequest
from contract.queues import TASK_CLASSIFY, TASK_RETRAIN
from contract.records import Classified, SeenFile
from contract.settings import Settings
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import record_files
from db.models import (
    Image,
    ImageStatus,
    ModelStatus,
    ModelVersion,
    Prediction,
    RunStatus,
    TrainingRun,
)
from db.versions import active_model, ensure_base_model
from inbox_classifier.cli_models import models, reclassify
from inbox_classifier.cli_retrain import retrain
from tests.helpers.training import make_labeled, training_settings
from worker.training.run import run_training

TRAIN_ENV = {
    "INBOX_CLASSIFIER_TRAIN_MODE": "frozen",
    "INBOX_CLASSIFIER_TRAIN_EPOCHS": "15",
    "INBOX_CLASSIFIER_TRAIN_BATCH_SIZE": "16",
    "INBOX_CLASSIFIER_TRAIN_PATIENCE": "5",
    "INBOX_CLASSIFIER_VAL_FRACTION": "0.25",
    "INBOX_CLASSIFIER_TORCH_THREADS": "2",
}


@pytest.fixture
def tsettings(settings: Settings) -> Settings:
    s = training_settings(settings)
    make_labeled(s.labeled_path)
    return s


def flags(s: Settings, command: Any = None) -> list[str]:
    """The test's settings as flags, those ``command`` takes (each takes only what it uses)."""
    assert s.redis_url
    pairs = [
        ("--data-dir", str(s.data_dir)),
        ("--redis-url", s.redis_url),
        ("--weights", "none"),
        ("--labeled-dir", str(s.labeled_path)),
    ]
    if command is not None:
        taken = {opt for param in command.params for opt in param.opts}
        pairs = [(flag, value) for flag, value in pairs if flag in taken]
    return [part for pair in pairs for part in pair]


def invoke(command: Any, args: list[str]) -> Result:
    result = CliRunner(env=TRAIN_ENV).invoke(command, args, catch_exceptions=False)
    return result


def queued_messages(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in a Redis list: headers plus the decoded JSON body."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for entry in raw:
        envelope = json.loads(entry)
        body = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": body[0], "kwargs": body[1]})
    return messages


def test_retrain_here_prints_its_settings_epochs_report_and_verdict(
    tsettings: Settings, session_factory
) -> None:
    result = invoke(retrain, ["--here", *flags(tsettings, retrain)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("training here, in this process (--here), not on a train worker")
    assert "model resnet18, weights none, device auto (cpu)" in out
    assert "epoch   1/15" in out and "val loss" in out
    assert "val accuracy" in out and " train / " in out
    assert "gate: no active model yet" in out
    assert "promoted" in out and "report.json" in out
    with transaction(session_factory) as s:
        assert active_model(s).trained  # type: ignore[union-attr]

    # Unchanged data: skipped; --force trains again (fine-tuning the active model).
    again = invoke(retrain, ["--here", *flags(tsettings, retrain)])
    assert again.exit_code == 0 and "skipped" in again.output and "unchanged" in again.output
    forced = invoke(retrain, ["--here", "--force", *flags(tsettings, retrain)])
    assert forced.exit_code == 0 and "fine-tuned from v1" in forced.output


def test_retrain_refusal_exits_nonzero(settings: Settings) -> None:
    s = training_settings(settings)
    make_labeled(s.labeled_path, classes=("red",))
    result = invoke(retrain, ["--here", *flags(s, retrain)])
    assert result.exit_code == 1
    assert "need at least 2 classes" in result.output


def test_retrain_without_wait_queues_a_run_for_the_train_workers(
    tsettings: Settings, session_factory
) -> None:
    result = invoke(retrain, ["--force", *flags(tsettings, retrain)])
    assert result.exit_code == 0, result.output
    run_id = int(result.output.split()[1])
    (message,) = queued_messages(tsettings.redis_url or "", "train")
    assert message["task"] == TASK_RETRAIN
    assert message["args"] == [
        {"v": 1, "trigger": "manual", "force": True, "run_id": run_id, "fresh": False}
    ]
    request = asdict(RetrainRequest.decode(message["args"][0]))
    with transaction(session_factory) as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None and run.status == RunStatus.RUNNING
        assert run.progress == {"phase": "queued"}

    # What a train worker then does with it: the same row goes running -> promoted.
    out = run_training(tsettings, session_factory, **request)
    assert out.run_id == run_id and out.status == RunStatus.PROMOTED
    # A redelivered copy of the finished request does nothing.
    again = run_training(tsettings, session_factory, **request)
    assert again.run_id == run_id and again.status == RunStatus.PROMOTED
    with transaction(session_factory) as s:
        assert len(s.scalars(select(ModelVersion)).all()) == 1


def test_models_list_promote_and_rollback(tsettings: Settings, session_factory) -> None:
    good = run_training(tsettings, session_factory)
    bad = run_training(
        tsettings.model_copy(update={"train_lr": 1e-7, "train_epochs": 1}),
        session_factory,
        force=True,
        fresh=True,
    )
    assert (good.status, bad.status) == (RunStatus.PROMOTED, RunStatus.REJECTED)

    listing = invoke(models, flags(tsettings, models))
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "CLASSES"]
    assert "PER-CLASS ACC" in lines[0] and "STATUS" in lines[0]
    v1 = next(line for line in lines if line.startswith("1 "))
    v2 = next(line for line in lines if line.startswith("2 "))
    assert "v1" in v1 and "blue,green,red" in v1 and "active" in v1 and "red=" in v1
    assert "v2" in v2 and "rejected" in v2
    long = invoke(models, ["list", "--long", *flags(tsettings, models)])
    assert "rejected by the gate" in long.output

    promoted = invoke(models, ["promote", "2", *flags(tsettings, models)])
    assert promoted.exit_code == 0, promoted.output
    assert "v2 is now active (was v1)" in promoted.output
    with transaction(session_factory) as s:
        assert active_model(s).id == 2  # type: ignore[union-attr]
        v2_row = s.get(ModelVersion, 2)
        assert v2_row is not None and "overriding the gate" in (v2_row.reason or "")
        assert s.get(ModelVersion, 1).status == ModelStatus.RETIRED  # type: ignore[union-attr]

    rolled = invoke(models, ["rollback", *flags(tsettings, models)])
    assert rolled.exit_code == 0 and "v1 is now active (was v2)" in rolled.output
    with transaction(session_factory) as s:
        assert active_model(s).id == 1  # type: ignore[union-attr]

    # Flags given to the group apply to its subcommands.
    assert "already active" in invoke(models, [*flags(tsettings, models), "promote", "1"]).output
    missing = CliRunner(env=TRAIN_ENV).invoke(models, ["promote", "99", *flags(tsettings, models)])
    assert missing.exit_code != 0 and "no model version 99" in missing.output


def test_rollback_without_history_is_an_error(tsettings: Settings) -> None:
    result = CliRunner(env=TRAIN_ENV).invoke(models, ["rollback", *flags(tsettings, models)])
    assert result.exit_code != 0 and "no previously active" in result.output


def _classified(session_factory, model_id: int, rows: list[tuple[str, str, float]]) -> None:  # type: ignore[no-untyped-def]
    files = [
        SeenFile(path=f"/inbox/{sha[:4]}.png", sha256=sha, size=1, mtime_ns=1) for sha, _, _ in rows
    ]
    with transaction(session_factory) as s:
        record_files(s, files)
        save_results(
            s,
            model_id,
            [
                Classified(sha, label, conf, [{"label": label, "confidence": conf}])
                for sha, label, conf in rows
            ],
        )


def test_a_promotion_rescores_the_unreviewed_low_confidence_rows(
    tsettings: Settings, session_factory
) -> None:
    """The backfill: after the promotion, unreviewed rows below BACKFILL_BELOW_CONFIDENCE are
    queued and sent for the new version, least confident first, up to BACKFILL_LIMIT; a row a
    person labeled, and a confident one, are left alone."""
    with transaction(session_factory) as s:
        base_id = ensure_base_model(s, "resnet18", "none", ["x", "y"]).id
    shas = [c * 64 for c in "abcde"]
    _classified(
        session_factory,
        base_id,
        [
            (shas[0], "red", 0.40),
            (shas[1], "red", 0.95),  # confident: stays
            (shas[2], "blue", 0.55),
            (shas[3], "blue", 0.30),
            (shas[4], "blue", 0.20),  # labeled by a person: stays
        ],
    )
    with transaction(session_factory) as s:
        s.execute(update(Image).where(Image.sha256 == shas[4]).values(human_label="blue"))
    settings = tsettings.model_copy(update={"backfill_below_confidence": 0.6, "backfill_limit": 2})
    trained = run_training(settings, session_factory)
    assert trained.status == RunStatus.PROMOTED
    messages = queued_messages(tsettings.redis_url or "", "classify")
    sent = [item["sha256"] for m in messages for item in m["args"][0]["items"]]
    assert sent == [shas[3], shas[0]]  # the two least confident unreviewed rows
    with transaction(session_factory) as s:
        status = {i.sha256: i.status for i in s.scalars(select(Image))}
    assert status[shas[3]] == status[shas[0]] == ImageStatus.QUEUED
    assert status[shas[1]] == status[shas[2]] == status[shas[4]] == ImageStatus.DONE


def test_reclassify_requeues_matching_done_images_for_the_active_model(
    tsettings: Settings, session_factory
) -> None:
    with transaction(session_factory) as s:
        base_id = ensure_base_model(s, "resnet18", "none", ["x", "y"]).id
    shas = [c * 64 for c in "abcd"]
    _classified(
        session_factory,
        base_id,
        [
            (shas[0], "red", 0.40),
            (shas[1], "red", 0.95),
            (shas[2], "blue", 0.55),
            (shas[3], "blue", 0.30),
        ],
    )
    # No backfill here: this is about what reclassify selects (the next test is the backfill).
    trained = run_training(tsettings.model_copy(update={"backfill_limit": 0}), session_factory)
    assert trained.status == RunStatus.PROMOTED

    dry = invoke(
        reclassify, ["--below-confidence", "0.6", "--dry-run", *flags(tsettings, reclassify)]
    )
    assert dry.exit_code == 0 and "3 image(s) match" in dry.output
    assert queued_messages(tsettings.redis_url or "", "classify") == []

    result = invoke(
        reclassify, ["--below-confidence", "0.6", "--label", "blue", *flags(tsettings, reclassify)]
    )
    assert result.exit_code == 0, result.output
    assert "2 image(s) queued for v" in result.output
    messages = queued_messages(tsettings.redis_url or "", "classify")
    assert {m["task"] for m in messages} == {TASK_CLASSIFY}
    sent = {item["sha256"] for m in messages for item in m["args"][0]["items"]}
    assert sent == {shas[2], shas[3]}
    with transaction(session_factory) as s:
        by_sha = {i.sha256: i for i in s.scalars(select(Image))}
        assert by_sha[shas[2]].status == ImageStatus.QUEUED
        assert by_sha[shas[2]].enqueued_at is not None and by_sha[shas[2]].attempts == 0
        assert by_sha[shas[0]].status == ImageStatus.DONE  # label 'red' not selected
        # Older predictions stay as history.
        assert len(s.scalars(select(Prediction)).all()) == 4

    bad = CliRunner(env=TRAIN_ENV).invoke(
        reclassify, ["--since", "yesterday", *flags(tsettings, reclassify)]
    )
    assert bad.exit_code == 2 and "yesterday" in bad.output
    since = invoke(
        reclassify, ["--since", "1h", "--older-version", "--dry-run", *flags(tsettings, reclassify)]
    )
    assert "2 image(s) match" in since.output  # the two still done


def test_commands_need_a_migrated_ledger(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "fresh")]
    result = CliRunner().invoke(models, args)
    assert result.exit_code != 0 and "no ledger here" in result.output
    assert not (tmp_path / "fresh").exists(), "a command that only reads creates nothing"


def test_label_from_the_terminal_counts_towards_the_retrain_threshold(
    settings: Settings, session_factory
) -> None:
    """`inbox-classifier label` goes through the same use case as the web app: the label that
    completes RETRAIN_AFTER_LABELS queues one `labels` run, and no second while it is open."""
    from inbox_classifier.cli_labels import label
    from tests.helpers.web import seed_images

    s = settings.model_copy(update={"retrain_after_labels": 3})
    seeded = seed_images(s, session_factory, [("cat", 0.6)] * 4)
    args = ["--data-dir", str(s.data_dir), "--redis-url", s.redis_url or ""]
    env = {"INBOX_CLASSIFIER_RETRAIN_AFTER_LABELS": "3", "INBOX_CLASSIFIER_INBOX": str(s.inbox)}
    typo = CliRunner().invoke(label, [seeded[0].sha256, "Cat", *args], env=env)
    assert typo.exit_code == 1
    assert "'Cat' is not a known class" in typo.output and "did you mean 'cat'" in typo.output
    assert "add --new-class to start it" in typo.output
    outputs = []
    for image, name in zip(seeded, ["a", "b", "a", "b"], strict=True):
        new = ["--new-class"] if image in seeded[:2] else []  # "a" and "b" are new at first
        result = CliRunner().invoke(label, [image.sha256, name, *new, *args], env=env)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "training run" not in outputs[0] + outputs[1]
    assert "3 new labels: training run" in outputs[2]
    assert "training run" not in outputs[3]  # one is queued: no second
    messages = queued_messages(s.redis_url or "", "train")
    assert [m["args"][0]["trigger"] for m in messages] == ["labels"]
    with transaction(session_factory) as session:
        (run,) = session.scalars(select(TrainingRun)).all()
        assert run.trigger == "labels" and run.status == RunStatus.RUNNING
