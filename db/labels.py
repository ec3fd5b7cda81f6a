"""Human labels: one current label per image (``images.human_label``), with every act kept in
``labels``. Each function runs inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from contract.clock import utcnow
from contract.paths import to_ledger
from db.models import Image, ImagePath, Label, LabelSource


@dataclass(frozen=True, slots=True)
class LabelTarget:
    """What labeling an image needs to know of it."""

    image_id: int
    sha256: str
    status: str
    model_label: str | None
    model_version_id: int | None
    human_label: str | None
    paths: list[str]  # most recently seen first


@dataclass(frozen=True, slots=True)
class LabelAct:
    label: str
    source: str
    reviewer: str | None
    model_label: str | None
    created_at: datetime
    undone_at: datetime | None


def target(session: Session, sha256: str) -> LabelTarget | None:
    row = session.execute(
        select(
            Image.id,
            Image.sha256,
            Image.status,
            Image.label,
            Image.model_version_id,
            Image.human_label,
        ).where(Image.sha256 == sha256)
    ).first()
    if row is None:
        return None
    paths = session.scalars(
        select(ImagePath.path)
        .where(ImagePath.image_id == row.id)
        .order_by(ImagePath.last_seen_at.desc(), ImagePath.id.desc())
    ).all()
    return LabelTarget(
        image_id=row.id,
        sha256=row.sha256,
        status=row.status,
        model_label=row.label,
        model_version_id=row.model_version_id,
        human_label=row.human_label,
        paths=list(paths),
    )


def set_label(
    session: Session,
    image: LabelTarget,
    label: str,
    *,
    file: str | None,
    reviewer: str | None = None,
) -> None:
    """Make ``label`` the image's human label; the label it replaces stays in the history."""
    now = utcnow()
    _close_current(session, image.image_id, now)
    session.add(
        Label(
            image_id=image.image_id,
            label=label,
            source=LabelSource.HUMAN.value,
            reviewer=reviewer,
            model_label=image.model_label,
            model_version_id=image.model_version_id,
            created_at=now,
            file=file,
        )
    )
    session.execute(
        update(Image)
        .where(Image.id == image.image_id)
        .values(human_label=label, labeled_at=now, updated_at=now)
    )


def clear_label(session: Session, image: LabelTarget) -> None:
    """Undo: the image has no human label any more (it returns to the review queue)."""
    now = utcnow()
    _close_current(session, image.image_id, now)
    session.execute(
        update(Image)
        .where(Image.id == image.image_id)
        .values(human_label=None, labeled_at=None, updated_at=now)
    )


def _close_current(session: Session, image_id: int, now: datetime) -> None:
    session.execute(
        update(Label)
        .where(Label.image_id == image_id, Label.undone_at.is_(None))
        .values(undone_at=now)
    )


def history(session: Session, image_id: int) -> list[LabelAct]:
    rows = session.scalars(select(Label).where(Label.image_id == image_id).order_by(Label.id))
    return [
        LabelAct(r.label, r.source, r.reviewer, r.model_label, r.created_at, r.undone_at)
        for r in rows
    ]


def labeled_since(session: Session, moment: datetime | None) -> int:
    """Human labels given after ``moment`` (all when None) that are still current."""
    query = select(func.count()).select_from(Label).where(Label.undone_at.is_(None))
    if moment is not None:
        query = query.where(Label.created_at > moment)
    return int(session.execute(query).scalar_one())


def human_classes(session: Session) -> list[str]:
    """Classes people have used, oldest first (the review page's class keys keep their order)."""
    first_used = func.min(Label.id)
    rows = session.execute(
        select(Label.label, first_used)
        .where(Label.undone_at.is_(None))
        .group_by(Label.label)
        .order_by(first_used)
    ).all()
    return [label for label, _ in rows]


def sha_for_path(session: Session, path: str) -> str | None:
    """The content hash last seen at ``path`` (a file-system path)."""
    return session.scalars(
        select(Image.sha256)
        .join(ImagePath, ImagePath.image_id == Image.id)
        .where(ImagePath.path == to_ledger(path))
        .limit(1)
    ).first()


def human_labels_of(session: Session, shas: list[str]) -> dict[str, str | None]:
    """For each of ``shas`` that a person ever labeled: its current human label (None once
    undone). Hashes never labeled are absent."""
    out: dict[str, str | None] = {}
    for start in range(0, len(shas), 500):  # bounded IN lists
        part = shas[start : start + 500]
        rows = session.execute(
            select(Image.sha256, Image.human_label)
            .where(Image.sha256.in_(part))
            .where(select(Label.id).where(Label.image_id == Image.id).exists())
        ).all()
        out.update({sha: label for sha, label in rows})
    return out
