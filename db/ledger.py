"""Writes to the ledger. Each function runs inside the caller's transaction (one unit of work)
and is safe to repeat: the pipeline is at-least-once, the ledger makes it exactly-once per
(image, model version)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from contract.chunks import chunked
from contract.clock import utcnow
from contract.failures import FailureKind, is_path_failure
from contract.messages import WorkItem
from contract.paths import to_ledger
from contract.records import SeenFile
from db.driver_sql import CHUNK, NotByIndex, bound, by_key, images_by_hash, is_postgresql
from db.models import Base, Image, ImagePath, ImageStatus


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
    connection = session.connection()
    _insert_images(connection, list(by_hash.values()), now)

    ids: dict[str, tuple[int, str, datetime | None]] = {}
    revive: list[int] = []
    for image_id, sha, status, enqueued_at, error_kind in images_by_hash(
        session, list(by_hash), Image.id, Image.sha256, Image.status, Image.enqueued_at,
        Image.error_kind,
    ):
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

    paths = list({f.path: f for f in files}.values())  # one row per path
    _upsert_paths(connection, paths, {sha: image_id for sha, (image_id, _, _) in ids.items()}, now)

    return [
        WorkItem(path=to_ledger(f.path), sha256=sha, stamp=f.stamp)
        for sha, f in by_hash.items()
        if ids[sha][1] == ImageStatus.QUEUED and ids[sha][2] is None
    ]


# The watcher's hottest statements, with the driver's own executemany (SQLite) or over
# arrays (PostgreSQL): db.driver_sql.


def _insert_images(connection: Connection, files: Sequence[SeenFile], now: datetime) -> None:
    """A queued row per new content (files have distinct hashes); known content is left."""
    queued = ImageStatus.QUEUED.value
    if is_postgresql(connection):
        connection.exec_driver_sql(
            "INSERT INTO images (sha256, size, status, attempts, created_at, updated_at) "
            f"SELECT v.sha256, v.size, '{queued}', 0, %s, %s "
            "FROM unnest(%b::text[], %b::int8[]) AS v(sha256, size) "
            "ON CONFLICT (sha256) DO NOTHING",
            (now, now, [f.sha256 for f in files], [f.size for f in files]),
        )
        return
    stamp = bound(connection, Image.__table__.c.created_at, now)
    connection.exec_driver_sql(
        "INSERT INTO images (sha256, size, status, attempts, created_at, updated_at) "
        f"VALUES (?, ?, '{queued}', 0, ?, ?) ON CONFLICT (sha256) DO NOTHING",
        [(f.sha256, f.size, stamp, stamp) for f in files],
    )


def _upsert_paths(
    connection: Connection, paths: Sequence[SeenFile], ids: dict[str, int], now: datetime
) -> None:
    """Each path (distinct) as seen now, pointing at its content's image row."""
    columns = "image_id, path, size, mtime_ns, first_seen_at, last_seen_at"
    upsert = (
        "ON CONFLICT (path) DO UPDATE SET image_id = excluded.image_id, size = excluded.size, "
        "mtime_ns = excluded.mtime_ns, last_seen_at = excluded.last_seen_at"
    )
    if is_postgresql(connection):
        connection.exec_driver_sql(
            f"INSERT INTO image_paths ({columns}) "
            "SELECT v.image_id, v.path, v.size, v.mtime_ns, %s, %s "
            "FROM unnest(%b::int[], %b::text[], %b::int8[], %b::int8[]) "
            f"AS v(image_id, path, size, mtime_ns) {upsert}",
            (
                now, now, [ids[f.sha256] for f in paths], [to_ledger(f.path) for f in paths],
                [f.size for f in paths], [f.mtime_ns for f in paths],
            ),
        )
        return
    stamp = bound(connection, Image.__table__.c.created_at, now)
    connection.exec_driver_sql(
        f"INSERT INTO image_paths ({columns}) VALUES (?, ?, ?, ?, ?, ?) {upsert}",
        [(ids[f.sha256], to_ledger(f.path), f.size, f.mtime_ns, stamp, stamp) for f in paths],
    )


def mark_enqueued(session: Session, sha256s: Sequence[str]) -> None:
    now = utcnow()
    connection = session.connection()
    if is_postgresql(connection):  # one statement, one array (db.driver_sql)
        by_key(connection)
        connection.exec_driver_sql(
            "UPDATE images SET enqueued_at = %s, updated_at = %s "
            f"WHERE sha256 = ANY(%b::text[]) AND status = '{ImageStatus.QUEUED.value}'",
            (now, now, list(sha256s)),
        )
        return
    # The driver's own statement (the ORM's bulk update cost more than SQLite's work), found
    # by the hashes, never through the status index (db.driver_sql.NotByIndex).
    stamp = bound(connection, Image.__table__.c.enqueued_at, now)
    for hash_part in chunked(list(sha256s), CHUNK):
        connection.exec_driver_sql(
            "UPDATE images SET enqueued_at = ?, updated_at = ? WHERE sha256 IN "
            f"({', '.join('?' * len(hash_part))}) AND +status = '{ImageStatus.QUEUED.value}'",
            (stamp, stamp, *hash_part),
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


def queued_items(session: Session, hashes: Iterable[str]) -> list[WorkItem]:
    """The work items of those of ``hashes`` still queued (a dead worker held them)."""
    seen: dict[str, WorkItem] = {}
    for part in chunked(sorted(hashes), CHUNK):
        query = (
            select(Image.sha256, ImagePath.path)
            .join(ImagePath, ImagePath.image_id == Image.id)
            .where(NotByIndex(Image.status) == ImageStatus.QUEUED, Image.sha256.in_(part))
            .order_by(Image.id, ImagePath.last_seen_at.desc(), ImagePath.id.desc())
        )
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
            .where(Image.sha256.in_(hash_part), NotByIndex(Image.status) == ImageStatus.DONE)
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
