"""How a model version does in production, against how it did on its validation split:

- the distribution of its production confidences against its validation ones (10 bins);
- the share of its results that need review (their conformal set is not one class);
- the mix of classes it predicts against the mix it was trained on;
- from the human labels given to its results, how often a person corrected each class.

Drift is the total variation distance between two distributions (half the sum of absolute
differences of their shares: 0 the same, 1 disjoint). Each function runs inside the caller's
transaction; the comparison itself is plain arithmetic on the report the run stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Image, Label, ModelVersion, Prediction

BINS = 10
MIN_PREDICTIONS = 200  # fewer production predictions: too few to speak of drift


@dataclass(frozen=True)
class Correction:
    labeled: int  # results of this class a person labeled
    corrected: int  # ... with another class

    @property
    def rate(self) -> float:
        return self.corrected / self.labeled if self.labeled else 0.0


@dataclass(frozen=True)
class Quality:
    version_id: int
    name: str
    predictions: int
    confidence_histogram: list[float]  # production, shares per bin
    validation_histogram: list[float]  # from the training report (empty: none)
    confidence_drift: float | None  # total variation distance; None: not enough to say
    needs_review_share: float | None  # of its current results; None: not calibrated
    validation_needs_review: float | None
    class_mix: dict[str, float]  # production predictions per class, shares
    training_mix: dict[str, float]  # training images per class, shares
    class_mix_drift: float | None
    corrections: dict[str, Correction] = field(default_factory=dict)

    def drifted(self, bound: float) -> bool:
        return self.confidence_drift is not None and self.confidence_drift > bound


def total_variation(p: dict[Any, float], q: dict[Any, float]) -> float:
    keys = set(p) | set(q)
    return round(0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys), 6)


def version_quality(session: Session, version_id: int) -> Quality | None:
    version = session.get(ModelVersion, version_id)
    if version is None:
        return None
    mine = Prediction.model_version_id == version_id
    bins = [
        func.sum(case((_in_bin(Prediction.confidence, i), 1), else_=0)).label(f"b{i}")
        for i in range(BINS)
    ]
    row = session.execute(select(func.count(), *bins).where(mine)).one()
    total = int(row[0] or 0)
    histogram = [round(int(n or 0) / total, 6) if total else 0.0 for n in row[1:]]
    mix_rows = session.execute(
        select(Prediction.label, func.count()).where(mine).group_by(Prediction.label)
    ).all()
    class_mix = {str(label): round(int(n) / total, 6) for label, n in mix_rows} if total else {}
    flagged, calibrated = session.execute(
        select(
            func.sum(case((Image.needs_review.is_(True), 1), else_=0)),
            func.count(Image.needs_review),
        ).where(Image.model_version_id == version_id)
    ).one()
    corrections = {
        str(model_label): Correction(int(n), int(wrong or 0))
        for model_label, n, wrong in session.execute(
            select(
                Label.model_label,
                func.count(),
                func.sum(case((Label.label != Label.model_label, 1), else_=0)),
            )
            # Images, not labeling acts: the current label of each (an undone or replaced
            # label is no correction any more).
            .where(
                Label.model_version_id == version_id,
                Label.model_label.is_not(None),
                Label.undone_at.is_(None),
            )
            .group_by(Label.model_label)
        )
    }
    report: dict[str, Any] = dict(version.report or {})
    calibration: dict[str, Any] = dict(report.get("calibration") or {})
    validation = [float(x) for x in calibration.get("val_confidence_histogram") or []]
    per_class: dict[str, Any] = dict(report.get("images_per_class") or {})
    trained = sum(int(c.get("train", 0)) for c in per_class.values())
    training_mix = (
        {name: round(int(c.get("train", 0)) / trained, 6) for name, c in per_class.items()}
        if trained
        else {}
    )
    enough = total >= MIN_PREDICTIONS
    return Quality(
        version_id=version_id,
        name=version.name,
        predictions=total,
        confidence_histogram=histogram,
        validation_histogram=validation,
        confidence_drift=(
            total_variation(dict(enumerate(histogram)), dict(enumerate(validation)))
            if enough and len(validation) == BINS
            else None
        ),
        needs_review_share=round(int(flagged or 0) / calibrated, 6) if calibrated else None,
        validation_needs_review=calibration.get("val_needs_review"),
        class_mix=class_mix,
        training_mix=training_mix,
        class_mix_drift=total_variation(class_mix, training_mix)
        if enough and training_mix
        else None,
        corrections=corrections,
    )


def _in_bin(column: Any, i: int) -> Any:
    low, high = i / BINS, (i + 1) / BINS
    return (column >= low) & ((column < high) if i < BINS - 1 else (column <= high))
