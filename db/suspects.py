"""Labeled images as training runs saw them (``labeled_images``) and a person's decisions on
the suspect ones (``suspect_decisions``). Each function runs inside the caller's transaction.

Suspects are the latest run's labeled images, most suspect first, less those a person has
decided on under the same label (a label kept stays kept in later runs; a relabeled image is
a new label, judged afresh)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Exists, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from contract.clock import utcnow
from contract.labeled import LabeledSeen
from db.models import LabeledImage, SuspectDecision, TrainingRun

#: Runs whose labeled images are kept (the latest, and the one before it to compare).
RUNS_KEPT = 2


@dataclass(frozen=True, slots=True)
class Suspect:
    sha256: str
    path: str  # under labeled/
    label: str
    suggested: str | None
    score: float
    given_probability: float | None
    split: str
    run_id: int


@dataclass(frozen=True, slots=True)
class Decision:
    id: int
    sha256: str
    label: str
    decision: str  # kept | relabeled | removed
    new_label: str | None
    moved_from: str | None
    moved_to: str | None
    decided_at: datetime


def save_seen(session: Session, run_id: int, rows: Sequence[LabeledSeen]) -> None:
    """Store a run's labeled images; older runs' beyond :data:`RUNS_KEPT` are dropped."""
    if rows:
        session.execute(
            insert(LabeledImage),
            [
                {
                    "run_id": run_id,
                    "sha256": r.sha256,
                    "path": r.path,
                    "label": r.label,
                    "split": r.split,
                    "phash": r.phash,
                    "suggested": r.suggested,
                    "given_probability": r.given_probability,
                    "score": r.score,
                }
                for r in rows
            ],
        )
    kept_runs = list(session.scalars(select(LabeledImage.run_id).distinct()).all())
    newest = sorted(kept_runs, reverse=True)[:RUNS_KEPT]
    if len(kept_runs) > RUNS_KEPT:
        session.execute(delete(LabeledImage).where(LabeledImage.run_id.not_in(newest)))


def latest_run(session: Session) -> int | None:
    """The latest run with scored labeled images."""
    return session.scalar(
        select(func.max(LabeledImage.run_id)).where(LabeledImage.score.is_not(None))
    )


def _decided() -> Exists:
    return (
        select(SuspectDecision.id)
        .where(
            SuspectDecision.sha256 == LabeledImage.sha256,
            SuspectDecision.label == LabeledImage.label,
            SuspectDecision.undone_at.is_(None),
        )
        .exists()
    )


def suspects(session: Session, limit: int, offset: int = 0) -> list[Suspect]:
    """The latest run's labeled images, most suspect first, less the decided ones."""
    run_id = latest_run(session)
    if run_id is None:
        return []
    rows = session.execute(
        select(LabeledImage)
        .where(LabeledImage.run_id == run_id, LabeledImage.score.is_not(None), ~_decided())
        .order_by(LabeledImage.score.desc(), LabeledImage.id)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return [_suspect(r) for r in rows]


def suspect(session: Session, sha256: str) -> Suspect | None:
    """The image as the latest run saw it (decided or not)."""
    run_id = latest_run(session)
    row = session.scalars(
        select(LabeledImage)
        .where(LabeledImage.run_id == run_id, LabeledImage.sha256 == sha256)
        .order_by(LabeledImage.id)
        .limit(1)
    ).first()
    return _suspect(row) if row is not None else None


def _suspect(row: LabeledImage) -> Suspect:
    return Suspect(
        row.sha256,
        row.path,
        row.label,
        row.suggested,
        float(row.score or 0.0),
        row.given_probability,
        row.split,
        row.run_id,
    )


def count_open(session: Session) -> int:
    run_id = latest_run(session)
    if run_id is None:
        return 0
    return int(
        session.scalar(
            select(func.count())
            .select_from(LabeledImage)
            .where(LabeledImage.run_id == run_id, LabeledImage.score.is_not(None), ~_decided())
        )
        or 0
    )


def record_decision(
    session: Session,
    sha256: str,
    label: str,
    decision: str,
    *,
    new_label: str | None = None,
    moved_from: str | None = None,
    moved_to: str | None = None,
    reviewer: str | None = None,
) -> Decision:
    row = SuspectDecision(
        sha256=sha256,
        label=label,
        decision=decision,
        new_label=new_label,
        moved_from=moved_from,
        moved_to=moved_to,
        reviewer=reviewer,
        decided_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return _decision(row)


def last_decision(session: Session, sha256: str) -> Decision | None:
    """The image's latest decision that is not undone."""
    row = session.scalars(
        select(SuspectDecision)
        .where(SuspectDecision.sha256 == sha256, SuspectDecision.undone_at.is_(None))
        .order_by(SuspectDecision.id.desc())
        .limit(1)
    ).first()
    return _decision(row) if row is not None else None


def undo_decision(session: Session, decision_id: int) -> None:
    session.execute(
        update(SuspectDecision)
        .where(and_(SuspectDecision.id == decision_id, SuspectDecision.undone_at.is_(None)))
        .values(undone_at=utcnow())
    )


def _decision(row: SuspectDecision) -> Decision:
    return Decision(
        row.id,
        row.sha256,
        row.label,
        row.decision,
        row.new_label,
        row.moved_from,
        row.moved_to,
        row.decided_at,
    )


def labeled_hashes(session: Session) -> list[tuple[str, str, str, bytes]]:
    """The latest run's labeled images with a hash: (sha256, path under labeled/, label,
    hash)."""
    run_id = session.scalar(select(func.max(LabeledImage.run_id)))
    if run_id is None:
        return []
    rows = session.execute(
        select(LabeledImage.sha256, LabeledImage.path, LabeledImage.label, LabeledImage.phash)
        .where(LabeledImage.run_id == run_id, LabeledImage.phash.is_not(None))
        .order_by(LabeledImage.id)
    ).all()
    return [(r[0], r[1], r[2], bytes(r[3] or b"")) for r in rows]


def has_runs(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(TrainingRun)) != 0
