"""Saving a trained version and settling it: its ledger row first (so a crash leaves a
candidate to reap, never files without a row), then its files, written atomically, then its
ONNX artifacts (worker.onnx_backend), then the gate's verdict: promoted (workers switch to it)
or rejected (kept for a manual promote)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from contract.reports import TrainingReport, VersionRef
from db import versions
from db.engine import transaction
from worker import model_store, modelzoo
from worker.training.gate import GateVerdict
from worker.training.report import curves_png, reliability_png, report_json, val_grid_png


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
