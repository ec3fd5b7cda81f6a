"""Read queries. Each returns a ``Select`` for the caller to execute (and to compose further).
Filters are always bound parameters, never formatted into SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session, aliased

from contract.clock import iso, utcnow
from contract.filters import ResultFilters
from contract.messages import WorkItem
from contract.serving import ServingRecord
from contract.status import ActiveModel, LedgerStatus
from db.models import Image, ImagePath, ImageStatus, LabelSource, ModelVersion, Prediction
from db.versions import active_model


def effective_label() -> Any:
    """The label an image shows: a person's where there is one, else the model's. The same
    expression as the ``ix_images_effective_label_*`` indexes, so they serve it."""
    return func.coalesce(Image.human_label, Image.label)


def label_source() -> Any:
    return case(
        (Image.human_label.is_not(None), LabelSource.HUMAN.value), else_=LabelSource.MODEL.value
    )


Columns = TypeVarTuple("Columns")


def apply_filters(
    query: Select[*Columns], f: ResultFilters, *, confidence_index: bool = True
) -> Select[*Columns]:
    """``query`` (over images joined to image_paths) narrowed by ``f``; bound parameters.

    ``confidence_index=False`` keeps the database off the confidence index for the range: a
    page in id order then walks the ids and filters as it goes (page size / selectivity rows),
    where the index would make it gather and sort every row in the range first."""
    if f.label is not None:
        query = query.where(effective_label() == f.label)
    confidence = Image.confidence if confidence_index else Image.confidence + 0
    if f.min_confidence is not None:
        query = query.where(confidence >= f.min_confidence)
    if f.max_confidence is not None:
        query = query.where(confidence <= f.max_confidence)
    if f.status is not None:
        query = query.where(Image.status == f.status)
    if (since := f.since_moment) is not None:
        query = query.where(Image.updated_at >= since)
    if (pattern := f.path_pattern) is not None:
        query = query.where(ImagePath.path.like(glob_to_like(pattern), escape="\\"))
    if f.reviewed is not None:
        reviewed = Image.human_label.is_not(None)
        query = query.where(reviewed if f.reviewed else ~reviewed)
    if f.needs_review is not None:
        query = query.where(Image.needs_review.is_(f.needs_review))
    if f.sure is not None:
        query = query.where(Image.sure.is_(f.sure))
    if f.near_duplicates is not None:
        grouped = Image.dup_group.is_not(None)
        query = query.where(grouped if f.near_duplicates else ~grouped)
    if f.dup_group is not None:
        query = query.where(Image.dup_group == f.dup_group)
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


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One (image, path) of :func:`results`, as ``results --format json`` prints it."""

    path: str
    sha256: str
    status: str
    label: str | None  # a person's label where there is one, else the model's
    label_source: str | None  # 'human' | 'model' (None while queued or failed)
    model_label: str | None  # the model's top label
    confidence: float | None  # the model's
    topk: list[Any]
    model_version: str | None
    error: str | None
    error_kind: str | None
    classified_at: str | None
    needs_review: bool | None = None  # the conformal set is not one class (None: uncalibrated)
    sure: bool | None = None  # at or above the class's target-precision threshold
    dup_group: int | None = None  # its near-duplicate group (the first image's id), if any

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def of(cls, r: Any, path: str) -> ResultRow:
        """A row of :func:`result_columns`, seen at ``path``."""
        return cls(
            path=path,
            sha256=r.sha256,
            status=r.status,
            label=r.human_label or r.label,
            label_source=source_of(r.human_label, r.label),
            model_label=r.label,
            confidence=r.confidence,
            topk=r.topk or [],
            model_version=r.version_name,
            error=r.error,
            error_kind=r.error_kind,
            classified_at=iso(r.classified_at),
            needs_review=r.needs_review,
            sure=r.sure,
            dup_group=r.dup_group,
        )


def source_of(human_label: str | None, model_label: str | None) -> str | None:
    if human_label is not None:
        return LabelSource.HUMAN.value
    return LabelSource.MODEL.value if model_label is not None else None


def result_columns() -> Select[Any]:
    """What a results listing reads of each image: one read model, for ``results``, the API and
    the pages (:meth:`ResultRow.of` turns a row of it into a result)."""
    return select(
        Image.id,
        Image.sha256,
        Image.status,
        Image.label,
        Image.human_label,
        Image.confidence,
        Image.topk,
        Image.error,
        Image.error_kind,
        Image.classified_at,
        Image.needs_review,
        Image.sure,
        Image.dup_group,
        ModelVersion.name.label("version_name"),
    ).outerjoin(ModelVersion, ModelVersion.id == Image.model_version_id)


def results(f: ResultFilters, limit: int | None = None) -> Select[Any]:
    """One row per (image, path), in id order: the image's current result and where it was
    seen (``path``)."""
    query = (
        result_columns()
        .add_columns(ImagePath.id.label("path_id"), ImagePath.path)
        .join(ImagePath, ImagePath.image_id == Image.id)
        .order_by(Image.id, ImagePath.id)
    )
    query = apply_filters(query, f)
    return query if limit is None else query.limit(limit)


def result_rows(session: Session, f: ResultFilters, limit: int | None = None) -> list[ResultRow]:
    return [ResultRow.of(r, r.path) for r in session.execute(results(f, limit))]


def ledger_status(session: Session, window_s: int) -> LedgerStatus:
    """The ledger's part of ``status --json``: images per status, the active model, and the
    classification rate over the last ``window_s`` seconds."""
    model = active_model(session)
    active = (
        None
        if model is None
        else ActiveModel(
            id=model.id,
            name=model.name,
            arch=model.arch,
            classes=len(model.classes),
            val_accuracy=model.val_accuracy,
            serving=ServingRecord.from_dict(model.serving),
        )
    )
    recent = done_since(session, timedelta(seconds=window_s))
    return LedgerStatus(
        images=status_counts(session),
        active_model=active,
        images_per_second=round(recent / window_s, 2),
    )


def status_counts(session: Session) -> dict[str, int]:
    """Images per status, every status present (0 when none)."""
    counts = {s.value: 0 for s in ImageStatus}
    query = select(Image.status, func.count()).group_by(Image.status)
    counts.update({state: n for state, n in session.execute(query)})
    return counts


def done_since(session: Session, window: timedelta) -> int:
    """How many results (first ones and rescores) were written in the last ``window``
    (for img/s): counted on the predictions' index, so images needs none on classified_at."""
    query = select(func.count()).where(Prediction.created_at >= utcnow() - window)
    return int(session.execute(query).scalar_one())


def reclassify_items(
    session: Session,
    active_version_id: int,
    below_confidence: float | None = None,
    older_than_version: bool = False,
    label: str | None = None,
    since: datetime | None = None,
    unreviewed: bool = False,
    limit: int | None = None,
) -> list[WorkItem]:
    """Done images to rescore with the active model, each with one of its paths; with
    ``limit``, the least confident first."""
    query = (
        select(Image.sha256, func.min(ImagePath.path))
        .join(ImagePath, ImagePath.image_id == Image.id)
        .where(Image.status == ImageStatus.DONE, Image.model_version_id != active_version_id)
        .group_by(Image.id, Image.sha256, Image.confidence)
    )
    if unreviewed:
        query = query.where(Image.human_label.is_(None))
    if limit is not None:
        query = query.order_by(Image.confidence, Image.id).limit(limit)
    if below_confidence is not None:
        query = query.where(Image.confidence < below_confidence)
    if older_than_version:
        query = query.where(Image.model_version_id < active_version_id)
    if label is not None:
        query = query.where(Image.label == label)
    if since is not None:
        query = query.where(Image.classified_at >= since)
    return [WorkItem(path=path, sha256=sha) for sha, path in session.execute(query)]


@dataclass(frozen=True, slots=True)
class WorkDone:
    """What the ledger says was done since a moment (`up`'s stop summary)."""

    classified: int  # first results
    rescored: int  # results of a later version for images done before
    failed: int


def work_since(session: Session, moment: datetime) -> WorkDone:
    """First results, rescores and failures recorded at or after ``moment``."""
    earlier = aliased(Prediction)
    first = ~(
        select(earlier.id)
        .where(earlier.image_id == Prediction.image_id, earlier.id < Prediction.id)
        .exists()
    )
    rows = session.execute(
        select(first, func.count()).where(Prediction.created_at >= moment).group_by(first)
    ).all()
    by_kind = {bool(kind): int(n) for kind, n in rows}
    failed = session.execute(
        select(func.count()).where(
            Image.status == ImageStatus.FAILED, Image.updated_at >= moment
        )
    ).scalar_one()
    return WorkDone(by_kind.get(True, 0), by_kind.get(False, 0), int(failed))
