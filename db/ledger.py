"""Writes to the ledger. Each function runs inside the caller's transaction (one unit of work)
and is safe to repeat: the pipeline is at-least-once, the ledger makes it exactly-once per
(image, model version)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from contract.chunks import chunked
from contract.clock import as_utc, utcnow
from contract.failures import FailureKind, is_path_failure
from contract.messages import WorkItem
from contract.paths import to_ledger
from contract.records import Classified, Failed, SeenFile
from db.models import Base, Image, ImagePath, ImageStatus, Prediction

# SQLite allows 32766 bound parameters per statement; stay well inside it.
CHUNK = 500


def _insert(session: Session, table: type[Base]) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL alike)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r} (use SQLite or PostgreSQL)")


def record_files(session: Session, files: Sequence[SeenFile]) -> list[WorkItem]:
    """Record files the watcher found; return those whose content still needs classifying.
    Paths are stored, and work items carry them, as :func:`contract.paths.to_ledger` writes
    them (any name the file system holds, as text).

    The same content under two names gives one image row with two paths and one work item.
    Content that is already queued (and sent), done or failed is not sent again.
    """
    if not files:
        return []
    now = utcnow()
    by_hash: dict[str, SeenFile] = {}
    for seen in files:
        by_hash.setdefault(seen.sha256, seen)
    # One statement with a list of parameter sets (executemany): it is compiled once and
    # cached, where a multi-row VALUES of each burst's length was compiled again every time.
    new_images = _insert(session, Image).on_conflict_do_nothing(index_elements=["sha256"])
    for seen_part in chunked(list(by_hash.values()), CHUNK):
        rows = [
            {
                "sha256": f.sha256,
                "size": f.size,
                "status": ImageStatus.QUEUED.value,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for f in seen_part
        ]
        session.execute(new_images, rows)

    ids: dict[str, tuple[int, str, datetime | None]] = {}
    revive: list[int] = []
    for hash_part in chunked(list(by_hash), CHUNK):
        query = select(
            Image.id, Image.sha256, Image.status, Image.enqueued_at, Image.error_kind
        ).where(Image.sha256.in_(hash_part))
        for image_id, sha, status, enqueued_at, error_kind in session.execute(query):
            if status == ImageStatus.FAILED and is_path_failure(error_kind):
                # Failed because a *path* vanished or changed, and these bytes are here again
                # (moved, or dropped again): queue the content once more.
                revive.append(image_id)
                status, enqueued_at = ImageStatus.QUEUED.value, None
            ids[sha] = (image_id, status, enqueued_at)
    for id_part in chunked(revive, CHUNK):
        session.execute(
            update(Image)
            .where(Image.id.in_(id_part), Image.status == ImageStatus.FAILED)
            .values(
                status=ImageStatus.QUEUED.value,
                error=None,
                error_kind=None,
                enqueued_at=None,
                updated_at=now,
            )
        )

    path_rows = [
        {
            "image_id": ids[f.sha256][0],
            "path": to_ledger(f.path),
            "size": f.size,
            "mtime_ns": f.mtime_ns,
            "first_seen_at": now,
            "last_seen_at": now,
        }
        for f in {f.path: f for f in files}.values()
    ]
    paths = _insert(session, ImagePath)
    paths = paths.on_conflict_do_update(
        index_elements=["path"],
        set_={
            "image_id": paths.excluded.image_id,
            "size": paths.excluded.size,
            "mtime_ns": paths.excluded.mtime_ns,
            "last_seen_at": paths.excluded.last_seen_at,
        },
    )
    for row_part in chunked(path_rows, CHUNK):
        session.execute(paths, list(row_part))

    return [
        WorkItem(path=to_ledger(f.path), sha256=sha)
        for sha, f in by_hash.items()
        if ids[sha][1] == ImageStatus.QUEUED and ids[sha][2] is None
    ]


def margin(result: Classified) -> float:
    """Top-1 minus top-2 probability: small when the model hesitates between two classes."""
    top = result.topk
    if len(top) < 2:
        return result.confidence
    return float(top[0]["confidence"]) - float(top[1]["confidence"])


def review_score(result: Classified) -> float:
    """The review queue's order, lowest first: an image whose conformal set is not a single
    class comes before any whose set is (its margin in [0, 1] against 1 + margin), and
    within each, the one the model hesitates on most. Uncalibrated results order by margin."""
    return margin(result) + (0.0 if result.needs_review else 1.0)


def mark_enqueued(session: Session, sha256s: Sequence[str]) -> None:
    now = utcnow()
    for hash_part in chunked(list(sha256s), CHUNK):
        session.execute(
            update(Image)
            .where(Image.sha256.in_(hash_part), Image.status == ImageStatus.QUEUED)
            .values(enqueued_at=now)
        )


def known_paths(session: Session, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) for paths already recorded, so rescans skip re-hashing them.
    ``paths`` are file-system paths, and so are the keys returned."""
    stored = {to_ledger(path): path for path in paths}
    found: dict[str, tuple[int, int]] = {}
    for path_part in chunked(list(stored), CHUNK):
        query = select(ImagePath.path, ImagePath.size, ImagePath.mtime_ns).where(
            ImagePath.path.in_(path_part)
        )
        for text, size, mtime_ns in session.execute(query):
            found[stored[text]] = (size, mtime_ns)
    return found


@dataclass(frozen=True)
class SavedBatch:
    """What :func:`save_batch` wrote."""

    updated: int  # images updated, as :func:`save_results` returns
    # When the watcher recorded each image that got its first result in this batch (the
    # drop-to-row latency starts there). Rescored and redelivered images are left out: their
    # created_at is from long before this batch.
    first_results_created_at: list[datetime]


def save_results(
    session: Session,
    model_version_id: int,
    classified: Sequence[Classified],
    failed: Sequence[Failed] = (),
) -> int:
    """Write one batch's outcome. Returns how many images were updated.

    Predictions are unique per (image, model version): a redelivered message adds nothing.
    """
    return save_batch(session, model_version_id, classified, failed).updated


def save_batch(
    session: Session,
    model_version_id: int,
    classified: Sequence[Classified],
    failed: Sequence[Failed] = (),
) -> SavedBatch:
    """:func:`save_results`, also telling when the newly classified images were recorded
    (read in the same query that finds their ids: no extra round trip)."""
    now = utcnow()
    hashes = [c.sha256 for c in classified] + [f.sha256 for f in failed]
    ids: dict[str, int] = {}
    unclassified_since: dict[str, datetime] = {}  # sha256 -> created_at, no result before
    for hash_part in chunked(hashes, CHUNK):
        for image_id, sha, created_at, classified_at in session.execute(
            select(Image.id, Image.sha256, Image.created_at, Image.classified_at).where(
                Image.sha256.in_(hash_part)
            )
        ):
            ids[sha] = image_id
            if classified_at is None:
                unclassified_since[sha] = created_at

    known = [c for c in classified if c.sha256 in ids]
    if known:
        rows = [
            {
                "image_id": ids[c.sha256],
                "model_version_id": model_version_id,
                "label": c.label,
                "confidence": c.confidence,
                "topk": c.topk,
                "created_at": now,
            }
            for c in known
        ]
        for row_part in chunked(rows, CHUNK):
            stmt = _insert(session, Prediction).values(list(row_part))
            session.execute(
                stmt.on_conflict_do_nothing(index_elements=["image_id", "model_version_id"])
            )
        session.execute(
            update(Image),
            [
                {
                    "id": ids[c.sha256],
                    "status": ImageStatus.DONE.value,
                    "error": None,
                    "error_kind": None,
                    "label": c.label,
                    "confidence": c.confidence,
                    "topk": c.topk,
                    "margin": margin(c),
                    "needs_review": c.needs_review,
                    "sure": c.sure,
                    "review_score": review_score(c),
                    "model_version_id": model_version_id,
                    "classified_at": now,
                    "updated_at": now,
                }
                for c in known
            ],
        )
    bad = [f for f in failed if f.sha256 in ids]
    if bad:
        # A failure never undoes a result: a late duplicate delivery (reconciler resend, Redis
        # restoring a dead worker's message) may find the file gone after it was classified,
        # and so may a rescore (`reclassify` sets done rows back to queued): the image keeps
        # the result it has.
        done: set[int] = set()
        has_result: set[int] = set()
        retry_elsewhere: set[int] = set()
        for id_part in chunked([ids[f.sha256] for f in bad], CHUNK):
            states = session.execute(
                select(Image.id, Image.status, Image.enqueued_at, Image.label).where(
                    Image.id.in_(id_part)
                )
            ).all()
            done.update(i for i, status, _, _ in states if status == ImageStatus.DONE)
            has_result.update(i for i, _, _, label in states if label is not None)
            retry_elsewhere.update(
                _seen_since_sent(
                    session, [(i, at) for i, s, at, _ in states if s != ImageStatus.DONE]
                )
            )
        changes: list[dict[str, Any]] = []
        for f in bad:
            image_id = ids[f.sha256]
            if image_id in done:
                continue
            if image_id in retry_elsewhere and is_path_failure(f.kind):
                # The path we were sent is gone, but the watcher saw these bytes at a path
                # since (the file was moved within the inbox): leave it queued and unsent,
                # so the reconciler sends it again with the newest path.
                changes.append({"id": image_id, "enqueued_at": None, "updated_at": now})
                continue
            if image_id in has_result:
                changes.append(
                    {"id": image_id, "status": ImageStatus.DONE.value, "updated_at": now}
                )
                continue
            changes.append(
                {
                    "id": image_id,
                    "status": ImageStatus.FAILED.value,
                    "error": f.error,
                    "error_kind": f.kind.value,
                    "updated_at": now,
                }
            )
        if changes:
            session.execute(update(Image), changes)
    first = {c.sha256 for c in known} & unclassified_since.keys()
    return SavedBatch(len(known) + len(bad), [unclassified_since[sha] for sha in first])


def _seen_since_sent(session: Session, rows: Sequence[tuple[int, datetime | None]]) -> set[int]:
    """Images (id, enqueued_at) that had a path recorded after they were last sent."""
    sent = {image_id: at for image_id, at in rows if at is not None}
    if not sent:
        return set()
    out: set[int] = set()
    for id_part in chunked(list(sent), CHUNK):
        for image_id, last_seen in session.execute(
            select(ImagePath.image_id, ImagePath.last_seen_at).where(
                ImagePath.image_id.in_(id_part)
            )
        ):
            if as_utc(last_seen) > as_utc(sent[image_id]):
                out.add(image_id)
    return out


def find_stuck(session: Session, older_than: timedelta, limit: int = 10_000) -> list[WorkItem]:
    """Queued rows that were never sent, or were sent longer ago than ``older_than``."""
    cutoff = utcnow() - older_than
    query = (
        select(Image.sha256, ImagePath.path)
        .join(ImagePath, ImagePath.image_id == Image.id)
        .where(
            Image.status == ImageStatus.QUEUED,
            or_(
                and_(Image.enqueued_at.is_(None), Image.created_at < cutoff),
                Image.enqueued_at < cutoff,
            ),
        )
        # The most recently seen path first: after a move within the inbox, the old path
        # is gone and the new one is where the bytes are.
        .order_by(Image.id, ImagePath.last_seen_at.desc(), ImagePath.id.desc())
        .limit(limit)
    )
    seen: dict[str, WorkItem] = {}
    for sha, path in session.execute(query):
        seen.setdefault(sha, WorkItem(path=path, sha256=sha))
    return list(seen.values())


ORPHAN_ERROR = (
    "file replaced by new content before it was classified (the new content is its own image)"
)


def fail_orphans(session: Session, older_than: timedelta) -> int:
    """Fail queued images that no path leads to any more. A path that gets new content is
    moved to the new image (:func:`record_files`); if the old content's message was lost
    meanwhile, nothing could ever classify it, and :func:`find_stuck` (which needs a path)
    would never see it. Returns how many were failed."""
    cutoff = utcnow() - older_than
    result: Any = session.execute(
        update(Image)
        .where(
            Image.status == ImageStatus.QUEUED,
            Image.created_at < cutoff,
            ~select(ImagePath.id).where(ImagePath.image_id == Image.id).exists(),
        )
        .values(
            status=ImageStatus.FAILED.value,
            error=ORPHAN_ERROR,
            error_kind=FailureKind.ORPHANED.value,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def count_attempt(session: Session, sha256s: Sequence[str], max_attempts: int) -> list[str]:
    """Count one more delivery for each image; fail for good those over ``max_attempts``.

    Returns the hashes still worth sending.
    """
    keep: list[str] = []
    now = utcnow()
    for hash_part in chunked(list(sha256s), CHUNK):
        rows = session.execute(
            select(Image.id, Image.sha256, Image.attempts).where(Image.sha256.in_(hash_part))
        ).all()
        updates = []
        for image_id, sha, attempts in rows:
            attempts += 1
            change: dict[str, Any] = {"id": image_id, "attempts": attempts, "updated_at": now}
            if attempts > max_attempts:
                change["status"] = ImageStatus.FAILED.value
                change["error"] = f"gave up after {max_attempts} deliveries without a result"
                change["error_kind"] = FailureKind.GAVE_UP.value
            else:
                keep.append(sha)
            updates.append(change)
        if updates:
            session.execute(update(Image), updates)
    return keep


def requeue_done(session: Session, sha256s: Sequence[str]) -> None:
    """Set done images back to queued (never sent), for a rescore by the active model. Their
    results stay until the new ones are written; failures never undo them."""
    for hash_part in chunked(list(sha256s), CHUNK):
        session.execute(
            update(Image)
            .where(Image.sha256.in_(hash_part), Image.status == ImageStatus.DONE)
            .values(
                status=ImageStatus.QUEUED.value,
                enqueued_at=None,
                attempts=0,
                error=None,
                error_kind=None,
            )
        )


def requeue_failed(
    session: Session, *, kind: str | None = None, sha256s: Sequence[str] = ()
) -> list[WorkItem]:
    """Failed images a person has fixed (the file replaced, permissions mended): back to
    queued, never sent, with a fresh count of deliveries. By kind, by hash, or both. Returns
    what to send, each with its most recently seen path."""
    query = select(Image.id).where(Image.status == ImageStatus.FAILED)
    if kind is not None:
        query = query.where(Image.error_kind == kind)
    if sha256s:
        query = query.where(Image.sha256.in_(list(sha256s)))
    elif kind is None:
        return []
    ids = list(session.scalars(query))
    now = utcnow()
    for id_part in chunked(ids, CHUNK):
        session.execute(
            update(Image)
            .where(Image.id.in_(id_part))
            .values(
                status=ImageStatus.QUEUED.value,
                error=None,
                error_kind=None,
                attempts=0,
                enqueued_at=None,
                updated_at=now,
            )
        )
    items: dict[int, WorkItem] = {}
    for id_part in chunked(ids, CHUNK):
        rows = session.execute(
            select(ImagePath.image_id, Image.sha256, ImagePath.path)
            .join(Image, Image.id == ImagePath.image_id)
            .where(ImagePath.image_id.in_(id_part))
            .order_by(ImagePath.image_id, ImagePath.last_seen_at.desc(), ImagePath.id.desc())
        )
        for image_id, sha, path in rows:
            items.setdefault(image_id, WorkItem(path=path, sha256=sha))
    return list(items.values())
