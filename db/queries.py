"""Read queries. Each returns a ``Select`` for the caller to execute (and to compose further).
Filters are always bound parameters, never formatted into SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, func, select

from db.models import Image, ImagePath, ModelVersion, Prediction, TrainingRun, utcnow


@dataclass(frozen=True, slots=True)
class ResultFilter:
    label: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    status: str | None = None
    since: datetime | None = None
    path_glob: str | None = None
    model_version_id: int | None = None
    limit: int | None = None


def results(f: ResultFilter) -> Select[Image, ImagePath, ModelVersion]:
    """One row per (image, path): the image's current result and where it was seen."""
    query = (
        select(Image, ImagePath, ModelVersion)
        .join(ImagePath, ImagePath.image_id == Image.id)
        .outerjoin(ModelVersion, ModelVersion.id == Image.model_version_id)
        .order_by(Image.id, ImagePath.id)
    )
    if f.label is not None:
        query = query.where(Image.label == f.label)
    if f.min_confidence is not None:
        query = query.where(Image.confidence >= f.min_confidence)
    if f.max_confidence is not None:
        query = query.where(Image.confidence <= f.max_confidence)
    if f.status is not None:
        query = query.where(Image.status == f.status)
    if f.since is not None:
        query = query.where(Image.updated_at >= f.since)
    if f.path_glob is not None:
        query = query.where(ImagePath.path.like(glob_to_like(f.path_glob), escape="\\"))
    if f.model_version_id is not None:
        query = query.where(Image.model_version_id == f.model_version_id)
    if f.limit is not None:
        query = query.limit(f.limit)
    return query


def glob_to_like(pattern: str) -> str:
    """Shell glob (``*``, ``?``) to a LIKE pattern, escaping LIKE's own wildcards."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def status_counts() -> Select[str, int]:
    return select(Image.status, func.count()).group_by(Image.status)


def done_since(window: timedelta) -> Select[int]:
    """How many images were classified in the last ``window`` (for img/s)."""
    return select(func.count()).where(Image.classified_at >= utcnow() - window)


def model_versions() -> Select[ModelVersion]:
    return select(ModelVersion).order_by(ModelVersion.id)


def predictions_for(image_id: int) -> Select[Prediction]:
    return select(Prediction).where(Prediction.image_id == image_id).order_by(Prediction.id)


def training_runs(limit: int = 20) -> Select[TrainingRun]:
    return select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)


def reclassify_candidates(
    active_version_id: int,
    below_confidence: float | None = None,
    older_than_version: bool = False,
    label: str | None = None,
    since: datetime | None = None,
) -> Select[str, str]:
    """(sha256, path) of done images to rescore with the active model."""
    query = (
        select(Image.sha256, func.min(ImagePath.path))
        .join(ImagePath, ImagePath.image_id == Image.id)
        .where(Image.status == "done", Image.model_version_id != active_version_id)
        .group_by(Image.id, Image.sha256)
    )
    if below_confidence is not None:
        query = query.where(Image.confidence < below_confidence)
    if older_than_version:
        query = query.where(Image.model_version_id < active_version_id)
    if label is not None:
        query = query.where(Image.label == label)
    if since is not None:
        query = query.where(Image.classified_at >= since)
    return query
