"""The ledger's side of near-duplicates: the perceptual hashes, and the groups a grouping pass
found (``images.dup_group``, the id of each group's first image). Each function runs inside
the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus


def hashes(session: Session) -> tuple[list[int], list[str], list[bytes]]:
    """Every classified image with a hash: ids, content hashes and perceptual hashes, by id."""
    rows = session.execute(
        select(Image.id, Image.sha256, Image.phash)
        .where(Image.phash.is_not(None), Image.status == ImageStatus.DONE)
        .order_by(Image.id)
    ).all()
    return [r[0] for r in rows], [r[1] for r in rows], [bytes(r[2] or b"") for r in rows]


def stored_groups(session: Session) -> dict[int, int]:
    """image id -> its group (the group's first image id), for the images in a group."""
    query = select(Image.id, Image.dup_group).where(Image.dup_group.is_not(None))
    return {
        image_id: group
        for image_id, group in session.execute(query).tuples()
        if group is not None
    }


def hashed_count(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Image).where(Image.phash.is_not(None))) or 0
    )


def phash_of(session: Session, sha256: str) -> bytes | None:
    value = session.scalar(select(Image.phash).where(Image.sha256 == sha256))
    return bytes(value) if value is not None else None


def save_groups(session: Session, groups: Sequence[Sequence[int]]) -> int:
    """Make ``groups`` (lists of image ids) the ledger's groups: each member's ``dup_group``
    is its group's smallest id, every other image's None. Returns the images changed."""
    wanted = {image_id: min(group) for group in groups for image_id in group}
    current: dict[int, int | None] = {
        image_id: group
        for image_id, group in session.execute(
            select(Image.id, Image.dup_group).where(Image.dup_group.is_not(None))
        ).all()
    }
    changed = 0
    gone = [image_id for image_id in current if image_id not in wanted]
    if gone:
        changed += len(gone)
        for start in range(0, len(gone), 500):
            session.execute(
                update(Image).where(Image.id.in_(gone[start : start + 500])).values(dup_group=None)
            )
    by_group: dict[int, list[int]] = {}
    for image_id, group in wanted.items():
        if current.get(image_id) != group:
            by_group.setdefault(group, []).append(image_id)
    for group, members in by_group.items():
        changed += len(members)
        for start in range(0, len(members), 500):
            session.execute(
                update(Image)
                .where(Image.id.in_(members[start : start + 500]))
                .values(dup_group=group)
            )
    return changed


def group_of(session: Session, sha256: str) -> int | None:
    return session.scalar(select(Image.dup_group).where(Image.sha256 == sha256))


def shas_of(session: Session, image_ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for start in range(0, len(image_ids), 500):
        chunk = list(image_ids[start : start + 500])
        out.update(
            session.execute(select(Image.id, Image.sha256).where(Image.id.in_(chunk))).tuples()
        )
    return out
