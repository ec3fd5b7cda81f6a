"""The learning loop end to end, with real parts: generated images on disk, real torchvision
resnet18 (random init: nothing is downloaded), the real Redis and migrated SQLite ledger of the
fixtures. Frozen mode keeps each run to a few seconds on two cores."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from sqlalchemy import select

from broker.app import make_celery
from contract.clock import utcnow
from contract.labeled import class_name_problem, manifest_sha256
from contract.messages import RetrainRequest
from contract.queues import TASK_RETRAIN
from contract.settings import Settings
from db import versions
from db.engine import transaction
from db.models import ModelStatus, ModelVersion, RunStatus, TrainingRun
from db.versions import active_model
from tests.helpers.training import COLOURS, make_labeled, training_settings, write_class
from worker.model import model_store
from worker.model.classifier import Classifier
from worker.model.preprocess import load_for_model
from worker.training.dataset import (
    TrainingRefused,
    list_labeled,
    scan_labeled,
    split_score,
)
from worker.training.lock import LOCK_NAME
from worker.training.progress import RunOutcome
from worker.training.run import run_training
from worker.training.task import register_training_task


@pytest.fixture
def tsettings(settings: Settings) -> Settings:
    s = training_settings(settings)
    make_labeled(s.labeled_path)
    return s


def train(s: Settings, sessions, **kwargs) -> RunOutcome:  # type: ignore[no-untyped-def]
    return run_training(s, sessions, **kwargs)


def test_frozen_training_learns_promotes_and_writes_a_loadable_version(
    tsettings: Settings, session_factory
) -> None:
    events: list[dict] = []
    out = train(tsettings, session_factory, on_progress=events.append)
    assert out.status == RunStatus.PROMOTED, out.message
    report = out.report
    assert report is not None
    assert report["accuracy"] > 0.9  # three colours: clearly above chance (1/3)
    assert set(report["per_class_accuracy"]) == {"red", "green", "blue"}
    assert report["classes"] == ["blue", "green", "red"]
    assert report["mode"] == "frozen" and report["gate"]["promote"]
    assert sum(sum(row) for row in report["confusion_matrix"]["matrix"]) == report["val_images"]
    assert report["skipped_corrupt"] == 0
    assert {e["event"] for e in events} >= {"phase", "epoch", "finished"}

    with transaction(session_factory) as s:
        version = active_model(s)
        assert version is not None and version.id == out.version_id
        assert version.name == f"v{version.id}" and version.trained
        assert version.val_accuracy == report["accuracy"]
        assert version.manifest_sha256 == report["manifest_sha256"]
        assert version.reason and version.per_class_accuracy
        assert Path(version.weights) == tsettings.models_path / str(version.id) / "model.pt"
        run = s.get(TrainingRun, out.run_id)
        assert run is not None and run.status == RunStatus.PROMOTED
        assert run.model_version_id == version.id and run.finished_at is not None
        assert run.progress and run.progress["epoch"] == report["epochs_run"]

    folder = tsettings.models_path / str(out.version_id)
    assert {p.name for p in folder.iterdir()} == {
        "model.pt",
        "meta.json",
        "report.json",
        "curves.png",
        "val_grid.png",
        "reliability.png",
        "serving",  # its ONNX artifacts (tests/unit/worker/test_onnx_backend.py)
    }
    assert (folder / "serving" / "serving.json").is_file()
    on_disk = json.loads((folder / "report.json").read_text())
    assert on_disk["accuracy"] == report["accuracy"] and on_disk["history"]
    for picture in ("curves.png", "val_grid.png"):
        assert (folder / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The versioned file loads with weights_only, and inference (the worker's own
    # preprocessing and Classifier) agrees with the validation accuracy.
    loaded = model_store.load_version(tsettings.models_path, out.version_id)
    assert loaded.classes == ["blue", "green", "red"]
    classifier = Classifier(out.version_id, loaded, torch.device("cpu"), None)
    labeled = scan_labeled(
        tsettings.labeled_path,
        val_fraction=0.25,
        min_images_per_class=5,
        max_pixels=tsettings.max_image_pixels,
    )
    batch = np.stack(
        [load_for_model(s.path.read_bytes(), loaded.preprocessing, 10**8) for s in labeled.val]
    )
    predicted = [top[0]["label"] for top in classifier.predict(batch, topk=1)]
    truth = [labeled.classes[s.label] for s in labeled.val]
    agree = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert agree == pytest.approx(report["accuracy"], abs=0.1)


def test_unchanged_labeled_data_skips_and_force_fine_tunes(
    tsettings: Settings, session_factory
) -> None:
    first = train(tsettings, session_factory)
    assert first.status == RunStatus.PROMOTED

    again = train(tsettings, session_factory, trigger="schedule")
    assert again.status == RunStatus.SKIPPED and "unchanged" in again.message
    assert again.version_id is None

    forced = train(tsettings, session_factory, force=True)
    assert forced.status in (RunStatus.PROMOTED, RunStatus.REJECTED)
    assert (
        forced.report and forced.report["started_from"] == f"fine-tuned from {first.version_name}"
    )

    # New images change the manifest: the next scheduled run trains.
    write_class(tsettings.labeled_path / "red", COLOURS["red"], 2, start=500)
    changed = train(tsettings, session_factory, trigger="schedule")
    assert changed.status in (RunStatus.PROMOTED, RunStatus.REJECTED)
    with transaction(session_factory) as s:
        statuses = [r.status for r in s.scalars(select(TrainingRun).order_by(TrainingRun.id))]
    assert statuses[1] == RunStatus.SKIPPED


def test_gate_rejects_a_worse_candidate_and_promotes_a_good_one(
    tsettings: Settings, session_factory
) -> None:
    good = train(tsettings, session_factory)
    assert good.status == RunStatus.PROMOTED

    # New labeled images, then a deliberately bad candidate: from the random base, one epoch
    # at a tiny learning rate. It is scored on the same validation images as the active one.
    for name, rgb in COLOURS.items():
        write_class(tsettings.labeled_path / name, rgb, 3, start=100)
    bad_settings = tsettings.model_copy(
        update={"train_lr": 1e-7, "train_epochs": 1, "gate_margin": 0.0}
    )
    bad = train(bad_settings, session_factory, fresh=True)
    assert bad.status == RunStatus.REJECTED, bad.message
    assert bad.report is not None
    gate = bad.report["gate"]
    assert not gate["promote"] and gate["active_version_id"] == good.version_id
    assert gate["candidate_accuracy"] < gate["active_accuracy"]
    held_out = bad.report["holdout"]
    assert gate["scored_on"] == held_out["scored_on"] == "held-out"
    assert gate["images"] == held_out["images"] > 0
    with transaction(session_factory) as s:
        assert active_model(s).id == good.version_id  # type: ignore[union-attr]
        rejected = s.get(ModelVersion, bad.version_id)
        assert rejected is not None and rejected.status == ModelStatus.REJECTED
        assert rejected.reason and "rejected by the gate" in rejected.reason
    # Its files are kept (it can still be promoted by hand).
    assert (tsettings.models_path / str(bad.version_id) / "model.pt").is_file()

    # The schedule does not retrain on data a candidate was just rejected on...
    again = train(tsettings, session_factory, trigger="schedule")
    assert again.status == RunStatus.SKIPPED
    assert f"since {bad.version_name} was trained on it (now rejected)" in again.message

    # ... but a forced, good candidate passes against the trained active model.
    better = train(tsettings.model_copy(update={"gate_margin": 0.0}), session_factory, force=True)
    assert better.status == RunStatus.PROMOTED, better.message
    assert better.report is not None
    assert better.report["gate"]["active_version_id"] == good.version_id
    assert better.report["started_from"] == f"fine-tuned from {good.version_name}"
    assert "passed the gate" in better.message
    with transaction(session_factory) as s:
        assert active_model(s).id == better.version_id  # type: ignore[union-attr]
        previous = s.get(ModelVersion, good.version_id)
        assert previous is not None and previous.status == ModelStatus.RETIRED
        history = versions.score_history(s)

    # Three versions, each scored on the same held-out images in the runs that compared them:
    # the active model is re-scored beside each candidate, by the same code.
    assert better.report["holdout"]["images"] == held_out["images"]
    by_run: dict[int | None, dict[int, float]] = {}
    for point in history:
        assert point.images == held_out["images"]
        by_run.setdefault(point.run_id, {})[point.version_id] = point.accuracy
    assert by_run[bad.run_id] == {
        bad.version_id: gate["candidate_accuracy"],
        good.version_id: gate["active_accuracy"],
    }
    assert set(by_run[better.run_id]) == {better.version_id, good.version_id}
    chart = versions.latest_scores(history)
    assert [p.version_id for p in chart] == [good.version_id, bad.version_id, better.version_id]


def test_full_mode_trains_the_whole_network(settings: Settings, session_factory) -> None:
    # Nothing chosen by timing (no budget to size the stem and schedule, no precision probe:
    # on a loaded machine those choices differ), and enough images that three epochs clear the
    # bar with room: with 24 per class (a dozen validation images) runs scored 0.57 to 0.86.
    s = training_settings(
        settings, train_mode="full", train_epochs=3, train_batch_size=8,
        train_budget_s=None, precision="fp32",
    )
    make_labeled(s.labeled_path, per_class=48)
    out = train(s, session_factory)
    assert out.status == RunStatus.PROMOTED, out.message
    assert out.report is not None and out.report["mode"] == "full"
    assert out.report["epochs_run"] <= 3
    assert out.report["accuracy"] > 0.6
    assert model_store.load_version(s.models_path, out.version_id).classes == [
        "blue",
        "green",
        "red",
    ]


def test_two_concurrent_triggers_give_one_training(tsettings: Settings, session_factory) -> None:
    """Two beats at once, through the task function itself: exactly one trains."""
    app = make_celery(tsettings)
    register_training_task(app, tsettings)
    task = app.tasks[TASK_RETRAIN]
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def beat() -> None:
        barrier.wait()
        results.append(task(RetrainRequest(trigger="schedule").encode()))

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["promoted", "skipped"], results
    skipped = next(r for r in results if r["status"] == "skipped")
    assert "in progress" in skipped["message"]
    with transaction(session_factory) as s:
        runs = s.scalars(select(TrainingRun)).all()
        assert sorted(r.status for r in runs) == ["promoted", "skipped"]
        assert all(r.trigger == "schedule" for r in runs)


def test_a_dead_run_blocks_only_until_its_lock_expires(
    tsettings: Settings, session_factory
) -> None:
    """A run killed mid-training leaves its lock (no longer renewed) and a RUNNING row with a
    stale heartbeat: the lock expires, and the next run marks the dead one failed."""
    client = redis.Redis.from_url(tsettings.redis_url)
    dead_lock = client.lock(LOCK_NAME, timeout=2, thread_local=False)
    assert dead_lock.acquire(blocking=False)
    stale = (utcnow().replace(microsecond=0)).isoformat()
    with transaction(session_factory) as s:
        orphan = ModelVersion(
            name="orphan",
            arch="resnet18",
            weights="",
            classes=["a"],
            status=ModelStatus.CANDIDATE.value,
            trained=True,
        )
        s.add(orphan)
        s.flush()
        dead = TrainingRun(
            status=RunStatus.RUNNING.value,
            trigger="schedule",
            model_version_id=orphan.id,
            progress={"phase": "training", "heartbeat": stale},
        )
        s.add(dead)
        s.flush()
        dead_id, orphan_id = dead.id, orphan.id

    blocked = train(tsettings, session_factory, trigger="schedule", lock_timeout_s=2)
    assert blocked.status == RunStatus.SKIPPED and "in progress" in blocked.message

    time.sleep(2.5)  # the dead holder's lock expires
    out = train(tsettings, session_factory, trigger="schedule", lock_timeout_s=2)
    assert out.status == RunStatus.PROMOTED, out.message
    with transaction(session_factory) as s:
        run = s.get(TrainingRun, dead_id)
        assert run is not None and run.status == RunStatus.FAILED
        assert run.message and "interrupted" in run.message
        version = s.get(ModelVersion, orphan_id)
        assert version is not None and version.status == ModelStatus.REJECTED
    assert not list(tsettings.models_path.glob(".tmp-*"))
    client.close()


KILLABLE = """
import json, sys
from contract.settings import Settings
from worker.training.run import run_training
run_training(Settings(**json.loads(sys.argv[1])), trigger="schedule", lock_timeout_s=3)
"""


@pytest.mark.slow
def test_a_killed_training_process_does_not_block_the_next_run(
    tsettings: Settings, session_factory
) -> None:
    """SIGKILL a real training process mid-epoch: nothing half-written is visible, its lock
    expires, and the next run marks it failed and trains."""
    slow = tsettings.model_copy(
        update={
            "train_mode": "full",
            "train_epochs": 50,
            "train_patience": 50,
            "train_batch_size": 8,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, json.dumps(slow.model_dump(mode="json"))],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 90
        dead_id = None
        while time.monotonic() < deadline and dead_id is None:
            assert proc.poll() is None, "the training process ended by itself"
            with transaction(session_factory) as s:
                for run in s.scalars(select(TrainingRun)):
                    if (run.progress or {}).get("epoch", 0) >= 1:
                        dead_id = run.id
            time.sleep(0.2)
        assert dead_id is not None, "training never reached its first epoch"
    finally:
        proc.kill()
        proc.wait()

    client = redis.Redis.from_url(tsettings.redis_url)
    deadline = time.monotonic() + 10
    while client.exists(LOCK_NAME) and time.monotonic() < deadline:
        time.sleep(0.2)  # no one renews it any more: it expires
    assert not client.exists(LOCK_NAME)
    client.close()

    out = train(tsettings, session_factory, lock_timeout_s=3)
    assert out.status == RunStatus.PROMOTED, out.message
    with transaction(session_factory) as s:
        dead = s.get(TrainingRun, dead_id)
        assert dead is not None and dead.status == RunStatus.FAILED
        assert dead.message and "interrupted" in dead.message
    versions = sorted(p.name for p in tsettings.models_path.iterdir())
    assert versions == [str(out.version_id)]  # nothing of the killed run is visible


def test_a_failed_save_leaves_the_active_model_alone(tsettings: Settings, session_factory) -> None:
    good = train(tsettings, session_factory)
    assert good.status == RunStatus.PROMOTED
    # The models folder becomes unusable (as with a full disk, save_version raises OSError).
    moved = tsettings.models_path.with_name("models-moved")
    tsettings.models_path.rename(moved)
    tsettings.models_path.write_text("not a directory")
    write_class(tsettings.labeled_path / "blue", COLOURS["blue"], 2, start=300)

    out = train(tsettings, session_factory)
    assert out.status == RunStatus.FAILED
    assert "could not save the model files" in out.message and "unchanged" in out.message
    with transaction(session_factory) as s:
        assert active_model(s).id == good.version_id  # type: ignore[union-attr]
        candidate = s.get(ModelVersion, out.version_id)
        assert candidate is not None and candidate.status == ModelStatus.REJECTED
        assert candidate.reason and "could not save" in candidate.reason


# --- bad labeled data -------------------------------------------------------------------------


def test_corrupt_images_are_skipped_and_empty_classes_ignored(
    tsettings: Settings, session_factory
) -> None:
    root = tsettings.labeled_path
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "green" / "empty.png").write_bytes(b"")
    for empty in ("purple", "cyan", "magenta", "teal", "olive", "navy", "plum"):
        (root / empty).mkdir()  # empty class folders: one warning for all of them
    (root / ".thumbnails").mkdir()  # hidden: never a class
    write_class(root / ".thumbnails", (1, 2, 3), 5)
    (root / "notes.txt").write_text("not an image")

    out = train(tsettings, session_factory)
    assert out.status == RunStatus.PROMOTED, out.message
    assert out.report is not None
    assert out.report["classes"] == ["blue", "green", "red"]
    assert out.report["skipped_corrupt"] == 2
    assert {c["path"] for c in out.report["corrupt_files"]} == {"red/broken.jpg", "green/empty.png"}
    emptied = [w for w in out.report["warnings"] if "without images" in w]
    assert len(emptied) == 1 and emptied[0].startswith("7 class folder(s) without images")


def test_one_class_is_refused_with_a_clear_message(settings: Settings, session_factory) -> None:
    s = training_settings(settings)
    make_labeled(s.labeled_path, classes=("red",))
    out = train(s, session_factory)
    assert out.status == RunStatus.FAILED
    assert "need at least 2 classes" in out.message
    with transaction(session_factory) as session:
        run = session.get(TrainingRun, out.run_id)
        assert run is not None and run.status == RunStatus.FAILED
        assert run.message == out.message
        assert session.scalars(select(ModelVersion)).first() is None


def test_a_schedule_without_labeled_folders_is_skipped_not_failed(
    settings: Settings, session_factory
) -> None:
    s = training_settings(settings)
    scheduled = train(s, session_factory, trigger="schedule")
    assert scheduled.status == RunStatus.SKIPPED and "no labeled class folders" in scheduled.message
    manual = train(s, session_factory)
    assert manual.status == RunStatus.FAILED and "no labeled folder" in manual.message


def test_too_few_images_and_unsafe_class_names_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "labeled"
    make_labeled(root, per_class=6)
    write_class(root / "tiny", (9, 9, 9), 2)
    with pytest.raises(TrainingRefused, match=r"too few usable images.*'tiny': 2"):
        scan_labeled(root, val_fraction=0.2, min_images_per_class=5, max_pixels=10**8)

    (root / "tiny").rename(root / "bad\x01name")
    with pytest.raises(TrainingRefused, match="unsafe class folder name"):
        scan_labeled(root, val_fraction=0.2, min_images_per_class=5, max_pixels=10**8)

    with pytest.raises(TrainingRefused, match="no labeled folder"):
        list_labeled(tmp_path / "missing")


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "nul\x00",
        "tab\tname",
        "bell\x07",
        ".hidden",
        " padded",
        "x" * 101,
        "zero\u200bwidth",
    ],
)
def test_unsafe_class_names(name: str) -> None:
    assert class_name_problem(name) is not None


@pytest.mark.parametrize("name", ["cat", "hot dog", "Été", "x" * 100, "a.b", "_unsure", "猫"])
def test_safe_class_names(name: str) -> None:
    assert class_name_problem(name) is None


def test_split_is_by_content_and_stable(tmp_path: Path) -> None:
    root = make_labeled(tmp_path / "labeled", per_class=12)
    first = scan_labeled(root, val_fraction=0.3, min_images_per_class=2, max_pixels=10**8)
    val_before = {s.sha256 for s in first.val}
    assert all(split_score(sha) < 0.3 for sha in val_before) or len(first.classes) == 3
    assert {s.label for s in first.val} == {0, 1, 2}  # every class has a validation image

    # Adding images (or renaming one) never moves an existing image across the split.
    write_class(root / "red", COLOURS["red"], 10, start=50)
    (root / "green" / "img_0000.png").rename(root / "green" / "renamed.png")
    second = scan_labeled(root, val_fraction=0.3, min_images_per_class=2, max_pixels=10**8)
    train_before = {s.sha256 for s in first.train}
    assert val_before <= {s.sha256 for s in second.val}
    assert train_before <= {s.sha256 for s in second.train}
    assert manifest_sha256(list_labeled(root)) != first.manifest_sha256

    # An explicit labeled/_val/<class>/ is the validation set; _val is not a class.
    for name, rgb in COLOURS.items():
        write_class(root / "_val" / name, rgb, 2, start=900)
    explicit = scan_labeled(root, val_fraction=0.3, min_images_per_class=2, max_pixels=10**8)
    assert explicit.explicit_val and explicit.classes == ["blue", "green", "red"]
    assert len(explicit.val) == 6 and all(s.rel.startswith("_val/") for s in explicit.val)
    assert not any(s.rel.startswith("_val/") for s in explicit.train)


def test_new_head_keeps_rows_of_known_classes() -> None:
    from torch import nn

    from worker.training.features import get_head, remap_head

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    old = get_head(model)
    kept = remap_head(model, ["a", "b"], ["b", "c", "a"])
    new = get_head(model)
    assert kept == 2 and new.out_features == 3
    assert torch.equal(new.weight[0], old.weight[1]) and torch.equal(new.bias[2], old.bias[0])
    assert not torch.equal(new.weight[1], old.weight[0])


# --- a real Celery worker ----------------------------------------------------------------------


@pytest.mark.slow
def test_retrain_through_a_real_celery_worker_on_the_train_queue(
    tsettings: Settings, session_factory
) -> None:
    from celery.contrib.testing.worker import start_worker

    from worker.training.run import create_queued_run

    app = make_celery(tsettings)
    register_training_task(app, tsettings)
    run_id = create_queued_run(session_factory)
    request = RetrainRequest(trigger="manual", run_id=run_id)
    app.send_task(TASK_RETRAIN, args=[request.encode()], queue="train")
    with start_worker(
        app, pool="solo", perform_ping_check=False, queues=["train"], shutdown_timeout=60
    ):
        deadline = time.monotonic() + 120
        status = RunStatus.RUNNING.value
        while time.monotonic() < deadline:
            with transaction(session_factory) as s:
                run = s.get(TrainingRun, run_id)
                assert run is not None
                status, message = run.status, run.message
            if status != RunStatus.RUNNING:
                break
            time.sleep(0.5)
    assert status == RunStatus.PROMOTED, message
    with transaction(session_factory) as s:
        assert active_model(s).trained  # type: ignore[union-attr]
