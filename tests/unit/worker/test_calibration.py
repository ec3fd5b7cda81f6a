"""Confidence you can act on: temperature scaling, conformal sets, per-class thresholds, the
review queue's order, the calibration travelling with a version into the workers, and the
fast CPU training paths (the input size from the data, the time budget)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from broker.send import send_classify
from contract.calibration import Calibration
from contract.records import Classified, SeenFile
from contract.settings import Settings
from db import browse
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import record_files
from db.models import Image, ImageStatus, ModelVersion
from db.versions import active_model, ensure_base_model
from tests.helpers.pipeline import record, wait_until
from tests.helpers.training import COLOURS, make_labeled, training_settings, write_class
from worker.classify.model_holder import ModelHolder
from worker.model import model_store
from worker.model.layout import worker_concurrency
from worker.model.preprocess import Preprocessing
from worker.tasks import create_worker_app
from worker.training.calibration import (
    calibrate,
    class_thresholds,
    conformal_threshold,
    expected_calibration_error,
    fit_temperature,
)
from worker.training.detail import ContentSize
from worker.training.plan import input_side, plan
from worker.training.run import run_training


def synthetic(n: int, classes: int, seed: int, sharpen: float = 1.0):  # type: ignore[no-untyped-def]
    """Logits whose softmax is the true distribution of the labels (drawn from it), then
    multiplied by ``sharpen``: > 1 makes the model overconfident by exactly that factor."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2.0
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=g).squeeze(1)
    return logits * sharpen, labels


def test_the_temperature_is_kept_only_where_it_helps_held_out_images() -> None:
    classes = [f"c{i}" for i in range(5)]
    # Overconfident validation and held-out images alike: the fitted T helps, and is kept.
    val, val_labels = synthetic(2000, 5, seed=3, sharpen=3.0)
    held, held_labels = synthetic(500, 5, seed=4, sharpen=3.0)
    kept, report = calibrate(val, val_labels, classes, 0.95, 0.95, held, held_labels)
    assert report["temperature_kept"] and kept.temperature == pytest.approx(3.0, rel=0.15)
    assert "kept: on 500 held-out images" in report["temperature_check"]
    # Held-out images that are already calibrated (the validation split was not like them):
    # dividing by T = 3 would make them underconfident, so T stays 1 and the report says why.
    fair, fair_labels = synthetic(500, 5, seed=5)
    refused, report = calibrate(val, val_labels, classes, 0.95, 0.95, fair, fair_labels)
    assert refused.temperature == 1.0 and report["temperature"] == 1.0
    assert not report["temperature_kept"] and report["temperature_fitted"] > 2
    check = report["temperature_check"]
    assert "not kept (T = 1)" in check and "NLL" in check
    # Without held-out images it is cross-fitted on the two halves of the validation images.
    _, report = calibrate(val, val_labels, classes, 0.95, 0.95)
    assert report["temperature_kept"] and "cross-fitted on the 2000" in report["temperature_check"]


def test_small_validation_sets_say_why_nothing_is_guaranteed() -> None:
    classes = [f"c{i}" for i in range(10)]
    logits, labels = synthetic(12, 10, seed=6, sharpen=2.0)
    calibration, report = calibrate(logits, labels, classes, 0.95, 0.95)
    assert calibration.set_threshold is None
    assert report["coverage_note"].startswith("coverage not guaranteed: 12 validation images")
    assert "19 needed" in report["coverage_note"]
    # With enough images overall but few per class, the classes share one pooled threshold.
    logits, labels = synthetic(150, 10, seed=7, sharpen=0.5)
    logits = logits + torch.nn.functional.one_hot(labels, 10) * 6  # mostly right and sure
    _, report = calibrate(logits, labels, classes, 0.95, 0.95)
    assert report["pooled_classes"], report["sure_note"]
    assert "with the pooled one" in report["sure_note"]


def test_temperature_scaling_undoes_overconfidence_and_lowers_the_ece() -> None:
    logits, labels = synthetic(4000, 5, seed=1, sharpen=3.0)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)  # it finds the factor it was sharpened by
    before = expected_calibration_error(logits.softmax(dim=1), labels)
    after = expected_calibration_error((logits / temperature).softmax(dim=1), labels)
    assert before > 0.1 and after < before / 3, (before, after)
    # A calibrated model is left (almost) alone.
    fair, fair_labels = synthetic(4000, 5, seed=2)
    assert fit_temperature(fair, fair_labels) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_conformal_sets_reach_their_coverage_on_held_out_data(coverage: float) -> None:
    """The guarantee holds on average over calibration draws, even for a model that is badly
    overconfident (it does not need calibration): 20 draws of 1,000 calibration images, each
    judged on 4,000 held-out ones."""
    reached = []
    for seed in range(20):
        logits, labels = synthetic(5000, 8, seed=100 + seed, sharpen=2.5)
        probs = logits.softmax(dim=1)
        threshold = conformal_threshold(probs[:1000], labels[:1000], coverage)
        assert threshold is not None
        held_out = probs[1000:] >= threshold
        reached.append(float(held_out[torch.arange(4000), labels[1000:]].double().mean()))
    mean = sum(reached) / len(reached)
    assert coverage - 0.01 <= mean <= coverage + 0.015, reached
    assert min(reached) >= coverage - 0.05, reached
    small, small_labels = synthetic(10, 8, seed=1)
    assert conformal_threshold(small.softmax(1), small_labels, 0.95) is None  # 10 cannot say


def test_class_thresholds_reach_the_target_precision_on_held_out_data() -> None:
    logits, labels = synthetic(20000, 4, seed=4)
    probs = logits.softmax(dim=1)
    classes = ["a", "b", "c", "d"]
    thresholds, _pooled = class_thresholds(probs[:5000], labels[:5000], classes, 0.9)
    assert set(thresholds) == set(classes)
    confidence, predicted = probs[5000:].max(dim=1)
    for index, name in enumerate(classes):
        chosen = (predicted == index) & (confidence >= thresholds[name])
        precision = float((labels[5000:][chosen] == index).double().mean())
        assert precision >= 0.88, (name, precision)


def test_flagged_images_reach_the_review_queue_first(settings: Settings, session_factory) -> None:
    shas = [f"{i:064x}" for i in range(4)]
    with transaction(session_factory) as session:
        record_files(session, [SeenFile(f"/in/{i}.jpg", s, 1, 1) for i, s in enumerate(shas)])
        base = ensure_base_model(session, "resnet18", "none", ["a", "b"])

        def result(sha: str, top: float, flagged: bool) -> Classified:
            topk = [{"label": "a", "confidence": top}, {"label": "b", "confidence": 1 - top}]
            return Classified(sha, "a", top, topk, needs_review=flagged)  # type: ignore[arg-type]

        save_results(
            session,
            base.id,
            [
                result(shas[0], 0.51, False),  # the smallest margin, but its set is one class
                result(shas[1], 0.90, True),  # flagged, clear margin
                result(shas[2], 0.60, True),  # flagged, smaller margin: first
                result(shas[3], 0.99, False),
            ],
        )
        order = [i.sha256 for i in browse.review_page(session, None, 10).items]
    assert order == [shas[2], shas[1], shas[0], shas[3]]


def test_a_trained_version_is_calibrated_and_its_workers_apply_it(
    settings: Settings, session_factory
) -> None:
    s = training_settings(settings, coverage=0.9)
    make_labeled(s.labeled_path, per_class=30)
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    report = out.report
    assert report is not None
    cal = report["calibration"]
    assert cal["temperature"] > 0 and cal["ece_after"] is not None
    assert cal["ece_after"] <= cal["ece_before"] + 1e-6  # NLL-fitted T never worsens it much
    assert cal["set_threshold"] is not None and cal["coverage_target"] == 0.9
    assert len(cal["val_confidence_histogram"]) == 10
    assert (s.models_path / str(out.version_id) / "reliability.png").stat().st_size > 1000
    with transaction(session_factory) as session:
        row = session.get(ModelVersion, out.version_id)
        assert row is not None and row.calibration is not None
        stored = Calibration.from_dict(row.calibration)
    assert stored.temperature == cal["temperature"]
    assert stored.set_threshold == cal["set_threshold"]

    # The checkpoint carries it (a restart reads it back), and a worker's model holder
    # switches to the version with it (a hot swap), dividing the logits by T.
    loaded = model_store.load_version(s.models_path, out.version_id)
    assert loaded.calibration == stored
    holder = ModelHolder(s.model_copy(update={"model_check_interval_s": 0.01}), session_factory)
    classifier = holder.current()
    assert classifier.version_id == out.version_id and classifier.loaded.calibration == stored
    batch = np.stack(
        [np.full((224, 224, 3), COLOURS["red"], np.uint8), np.full((224, 224, 3), 90, np.uint8)]
    )
    scored = classifier.score(batch, topk=3)
    with torch.inference_mode():
        expected = (classifier.logits(torch.from_numpy(batch)) / stored.temperature).softmax(1)
    for one, probs in zip(scored, expected, strict=True):
        assert one.topk[0]["confidence"] == pytest.approx(float(probs.max()), abs=1e-5)
        in_set = int((probs >= stored.set_threshold).sum())
        assert one.needs_review == (in_set != 1)


def test_from_scratch_on_32px_images_trains_and_serves_at_32px(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    s = training_settings(settings, train_mode="auto", train_epochs=4, model_check_interval_s=0.2)
    for name in ("red", "green", "blue"):
        write_class(s.labeled_path / name, COLOURS[name], 20, size=32)
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    assert out.report is not None and out.report["mode"] == "full"
    assert "random weights" in out.report["mode_reason"]
    assert out.report["input_size"].startswith("32 px")
    assert out.report["preprocessing"]["crop"] == 32
    assert model_store.load_version(s.models_path, out.version_id).preprocessing.crop == 32

    # Served at 32 px by a real worker: the results are written by the trained version.
    app = create_worker_app(s)
    inbox_files = [
        p
        for name in ("red", "blue")
        for p in write_class(s.inbox / name, COLOURS[name], 3, seed=9, size=32)
    ]
    with start_worker(
        app,
        pool="threads",
        concurrency=worker_concurrency(s),
        perform_ping_check=False,
        queues=["classify"],
        shutdown_timeout=30,
    ):
        send_classify(app, record(session_factory, inbox_files), files_per_message=3)

        def done() -> bool:
            with transaction(session_factory) as session:
                rows = session.scalars(select(Image)).all()
            return len(rows) == 6 and all(r.status == ImageStatus.DONE for r in rows)

        wait_until(done, 60, "6 images classified at 32 px")
    with transaction(session_factory) as session:
        rows = session.scalars(select(Image)).all()
        assert {r.model_version_id for r in rows} == {out.version_id}
        assert all(r.label in {"red", "green", "blue"} for r in rows)
        assert active_model(session).id == out.version_id  # type: ignore[union-attr]


def test_the_time_budget_stops_a_run_at_its_best_epoch(settings: Settings, session_factory) -> None:
    s = training_settings(settings, train_mode="full", train_epochs=500, train_patience=500)
    make_labeled(s.labeled_path, per_class=12)
    started = time.monotonic()
    out = run_training(s.model_copy(update={"train_budget_s": 15.0}), session_factory)
    took = time.monotonic() - started
    assert out.status == "promoted", out.message
    report = out.report
    assert report is not None and report["stopped_by_budget"] and report["budget_s"] == 15.0
    assert 1 <= report["epochs_run"] < 500 and took < 120
    best = max(report["history"], key=lambda h: (h["val_acc"], -h["val_loss"]))
    assert report["best_epoch"] == best["epoch"]
    assert report["accuracy"] == pytest.approx(best["val_acc"])  # the kept weights are its


def test_the_plan_picks_the_mode_and_the_input_size() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    imagenet = Preprocessing(resize=232, crop=224)
    big, small = ContentSize(500, 500, "500 px"), ContentSize(40, 40, "40 px")
    assert plan("auto", gpu, True, imagenet, big, None).mode == "full"
    assert plan("auto", cpu, True, imagenet, big, None).mode == "frozen"
    assert plan("auto", cpu, True, imagenet, big, 600.0).mode == "frozen+unfreeze"
    assert plan("auto", cpu, False, imagenet, big, None).mode == "full"
    assert plan("frozen", gpu, False, imagenet, big, None).mode == "frozen"
    assert plan("auto", cpu, True, imagenet, small, None).preprocessing == imagenet  # its own
    scratch = plan("auto", cpu, False, imagenet, small, None).preprocessing
    assert (scratch.resize, scratch.crop) == (32, 32)
    assert [input_side(n) for n in (8, 40, 50, 64, 100, 190, 4000)] == [
        32,
        32,
        64,
        64,
        96,
        192,
        224,
    ]
