"""Saving a trained version and settling it: its ledger row first (so a crash leaves a
candidate to reap, never files without a row), then its files, written atomically, then its
ONNX artifacts (worker.model.onnx_backend), then the gate's verdict: promoted (workers switch to it)
or rejected (kept for a manual promote)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from contract.reports import TrainingReport, VersionRef
from contract.serving import ServingRecord
from db import versions
from db.engine import transaction
from worker.model import model_store, modelzoo, onnx_backend
from worker.model.layout import usable_cores
from worker.model.serving import torch_reason
from worker.training.context import RunContext
from worker.training.gate import GateVerdict
from worker.training.report import curves_png, reliability_png, report_json, val_grid_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValGrid:
    """Validation images (uint8 HWC) to draw, with their true and predicted labels."""

    images: list[np.ndarray]
    truth: list[str]
    predicted: list[str]


@dataclass(frozen=True)
class Saved:
    version_id: int
    name: str
    promoted: bool
    reason: str  # the gate's (or why the save failed)
    failed: bool = False  # the files could not be written; the version is rejected


def save_and_settle(
    sessions: sessionmaker[Session],
    models_dir: Path,
    loaded: modelzoo.LoadedModel,
    report: TrainingReport,
    verdict: GateVerdict,
    grid: ValGrid,
    *,
    run_id: int | None,
    check: Callable[[], None],
    build_serving: Callable[[int, Path], None] | None = None,
) -> Saved:
    with transaction(sessions) as session:
        row = versions.create_candidate(
            session,
            run_id=run_id,
            arch=loaded.arch,
            classes=list(loaded.classes),
            val_accuracy=report["accuracy"],
            per_class_accuracy=dict(report["per_class_accuracy"]),
            manifest_sha256=report["manifest_sha256"],
            weights_path=lambda vid: str(
                model_store.version_dir(models_dir, vid) / model_store.MODEL_FILE
            ),
            report=report,
            calibration=loaded.calibration.to_dict(),
        )
        vid, name = row.id, row.name
    report["version"] = VersionRef(id=vid, name=name)

    title = f"{name} ({loaded.arch}, {report['mode']}): val accuracy {report['accuracy']:.3f}"
    extra = {
        "report.json": report_json(report),
        "curves.png": curves_png(report["history"], report["best_epoch"], title),
        "val_grid.png": val_grid_png(grid.images, grid.truth, grid.predicted, title=title),
    }
    if "calibration" in report and report["calibration"]["reliability_after"]:
        extra["reliability.png"] = reliability_png(report["calibration"], title)
    meta = {
        "version": vid,
        "name": name,
        "arch": loaded.arch,
        "classes": loaded.classes,
        "val_accuracy": report["accuracy"],
        "manifest_sha256": report["manifest_sha256"],
        "run_id": run_id,
        "created_at": report["created_at"],
    }
    try:
        check()
        model_store.save_version(models_dir, vid, loaded, meta, extra)
    except Exception as exc:
        where = model_store.version_dir(models_dir, vid)
        reason = f"could not save the model files to {where}: {type(exc).__name__}: {exc}"
        if isinstance(exc, OSError):
            reason += " (disk full or not writable?)"
        with transaction(sessions) as session:
            versions.reject(session, vid, reason)
        return Saved(vid, name, promoted=False, reason=reason, failed=True)

    if build_serving is not None:
        # Before the verdict: a promoted version's workers find its artifacts ready.
        build_serving(vid, model_store.version_dir(models_dir, vid))

    with transaction(sessions) as session:
        promoted, reason = versions.settle_candidate(
            session,
            vid,
            promote=verdict.promote,
            reason=verdict.reason,
            compared_with=verdict.active_version_id,
        )
    return Saved(vid, name, promoted, reason)


def serving_builder(
    ctx: RunContext, sessions: sessionmaker[Session], targets: Sequence[int]
) -> Callable[[int, Path], None] | None:
    """What builds the version's ONNX artifacts, int8 calibrated and checked on the validation
    split, where CPU workers will serve with ONNX Runtime (None where they will not). A failed
    build is logged and the workers serve the version with torch."""
    s = ctx.settings
    if (why := torch_reason(s, "cpu")) is not None:
        log.info("no ONNX artifacts built: %s", why)
        return None

    def build(version_id: int, folder: Path) -> None:
        ctx.on_phase("serving")
        count = min(len(targets), onnx_backend.SAMPLE_IMAGES)
        try:
            manifest = onnx_backend.build(
                ctx.loaded,
                folder,
                np.stack(ctx.eval_set.images(list(range(count)))),
                list(targets[:count]),
                weights_sha256=onnx_backend.sha256_file(folder / model_store.MODEL_FILE),
                built_from=f"{count} validation images",
                min_agreement=s.int8_min_agreement,
                margin=s.gate_margin,
                threads=s.torch_threads or usable_cores(),
            )
            with transaction(sessions) as session:
                versions.set_serving(
                    session, version_id, ServingRecord.of(manifest, s.inference_backend)
                )
        except Exception:
            log.exception("version %d: could not build its ONNX artifacts", version_id)

    return build
