"""The web app's reads: keyset pages of results and of the review queue, an image with its
history, label and failure counts, throughput by minute. A page never uses OFFSET: it asks
for the rows after the last one it showed (the cursor), in an order an index serves, so page
10,000 costs what page 1 does."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Integer, case, cast, func, or_, select, text, tuple_
from sqlalchemy.orm import Session, aliased

from contract.clock import iso, utcnow
from contract.filters import ResultFilters
from db.labels import LabelAct, history
from db.models import Image, ImagePath, ImageStatus, ModelVersion, Prediction
from db.queries import (
    ResultRow,
    apply_filters,
    effective_label,
    result_columns,
)

MAX_PAGE = 500

# Literal, not bound, so that SQLite sees the partial index's own condition and uses it.
_IN_REVIEW_QUEUE = text("images.status = 'done' AND images.human_label IS NULL")


class Sort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    LEAST_CONFIDENT = "confidence"  # classified rows only, least confident first
    MOST_CONFIDENT = "-confidence"


class BadCursor(ValueError):
    """A cursor this query did not hand out."""


@dataclass(frozen=True, slots=True)
class Page:
    items: list[ResultRow]
    next_cursor: str | None
    prev_cursor: str | None = None


def encode_cursor(kind: str, key: list[Any]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list[Any]:
    """The key a cursor of listing ``kind`` holds; :class:`BadCursor` for anything this module
    did not hand out: too long (checked before decoding), not base64 JSON, nested, another
    listing's, or numbers past what the database stores."""
    if len(cursor) > MAX_CURSOR:
        raise BadCursor(f"cursor longer than {MAX_CURSOR} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise BadCursor("malformed cursor") from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != kind:
        raise BadCursor("cursor from another listing or sort order")
    key = data[1:]
    for value, kind_of in zip(key, types, strict=True):
        if not isinstance(value, kind_of) or isinstance(value, bool) or not _storable(value):
            raise BadCursor("malformed cursor")
    return key


MAX_CURSOR = 400  # the longest this module makes is far shorter
MAX_ID = 2**63 - 1  # the largest integer SQLite and PostgreSQL's bigint hold


def _storable(value: Any) -> bool:
    if isinstance(value, int):
        return -MAX_ID - 1 <= value <= MAX_ID
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def result_page(
    session: Session,
    f: ResultFilters,
    sort: Sort = Sort.NEWEST,
    cursor: str | None = None,
    limit: int = 100,
) -> Page:
    """One row per (image, path), like ``results``, a page at a time. ``cursor`` is a page's
    ``next_cursor`` (the rows after it) or its ``prev_cursor`` (the rows before it)."""
    limit = max(1, min(limit, MAX_PAGE))
    by_confidence = sort in (Sort.LEAST_CONFIDENT, Sort.MOST_CONFIDENT)
    query = apply_filters(
        result_columns()
        .add_columns(ImagePath.id.label("path_id"), ImagePath.path)
        .join(ImagePath, ImagePath.image_id == Image.id),
        f,
        confidence_index=by_confidence,
    )
    keys: list[Any] = [Image.id, ImagePath.id]
    types: tuple[type, ...] = (int, int)
    if by_confidence:
        query = query.where(Image.confidence.is_not(None))
        keys.insert(0, Image.confidence)
        types = (float | int, int, int)  # type: ignore[assignment]
    descending = sort in (Sort.NEWEST, Sort.MOST_CONFIDENT)
    forward, backward = f"results:{sort.value}", f"results:{sort.value}:before"
    going_back = False
    if cursor:  # an empty one (a form's empty field) is the first page
        going_back = _cursor_kind(cursor) == backward
        bound = decode_cursor(cursor, backward if going_back else forward, types)
        key = tuple_(*keys)
        # Going back walks the same order the other way, then turns the rows round.
        query = query.where(
            key < tuple_(*bound) if descending != going_back else key > tuple_(*bound)
        )
    walk_descending = descending != going_back
    query = query.order_by(*(k.desc() if walk_descending else k.asc() for k in keys))
    rows = session.execute(query.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = list(rows[:limit])
    if going_back:
        rows.reverse()
    items = [ResultRow.of(r, r.path) for r in rows]

    def key_of(row: Any) -> list[Any]:
        return [row.confidence, row.id, row.path_id] if by_confidence else [row.id, row.path_id]

    has_next = more if not going_back else True
    has_prev = bool(cursor) if not going_back else more
    return Page(
        items,
        encode_cursor(forward, key_of(rows[-1])) if rows and has_next else None,
        encode_cursor(backward, key_of(rows[0])) if rows and has_prev else None,
    )


def _cursor_kind(cursor: str) -> str | None:
    """The listing a cursor names (checked in full by :func:`decode_cursor`)."""
    try:
        raw = base64.urlsafe_b64decode(cursor[:MAX_CURSOR] + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data[0] if isinstance(data, list) and data and isinstance(data[0], str) else None


COUNT_CAP = 10_000


def count_results(session: Session, f: ResultFilters, cap: int = COUNT_CAP) -> int:
    """How many (image, path) rows match, counted up to ``cap`` (a page that says "10,000+"
    should not pay for counting a million)."""
    matching = apply_filters(
        select(Image.id).join(ImagePath, ImagePath.image_id == Image.id), f
    ).limit(cap)
    return int(session.execute(select(func.count()).select_from(matching.subquery())).scalar_one())


def _latest_path() -> Any:
    return (
        select(ImagePath.path)
        .where(ImagePath.image_id == Image.id)
        .order_by(ImagePath.last_seen_at.desc(), ImagePath.id.desc())
        .limit(1)
        .correlate(Image)
        .scalar_subquery()
    )


def _first_of_its_group() -> Any:
    """An image in no near-duplicate group, or its group's first in the review queue: one
    decision on a picture teaches as much as one on each of its copies, so the queue shows
    one copy at a time (the next once that one is labeled)."""
    other = aliased(Image)
    earlier = (
        select(other.id)
        .where(
            other.dup_group == Image.dup_group,
            other.status == ImageStatus.DONE,
            other.human_label.is_(None),
            tuple_(other.review_score, other.id) < tuple_(Image.review_score, Image.id),
        )
        .correlate(Image)
        .exists()
    )
    return or_(Image.dup_group.is_(None), ~earlier)


def review_page(session: Session, cursor: str | None = None, limit: int = 20) -> Page:
    """Unreviewed results, the ones a person should see first first: those whose conformal
    prediction set is not a single class (``needs_review``), then the rest; each group by the
    smallest margin between the model's two best classes. Of a group of near-duplicates, only
    the first in that order."""
    limit = max(1, min(limit, MAX_PAGE))
    query = (
        result_columns()
        .add_columns(Image.review_score, _latest_path().label("path"))
        .where(_IN_REVIEW_QUEUE, _first_of_its_group())
    )
    if cursor:  # an empty one (a form's empty field) is the first page
        score, image_id = decode_cursor(cursor, "review", (float | int, int))  # type: ignore[arg-type]
        query = query.where(tuple_(Image.review_score, Image.id) > tuple_(score, image_id))
    query = query.order_by(Image.review_score, Image.id)
    rows = session.execute(query.limit(limit + 1)).all()
    items = [ResultRow.of(r, r.path or "") for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor("review", [last.review_score, last.id])
    return Page(items, next_cursor)


def review_backlog(session: Session, cap: int | None = None) -> int:
    """Images waiting for a person: classified, not labeled. With ``cap``, counting stops
    there (a count of a million index entries costs a third of a second in SQLite; a page
    that only needs "10,000+" should not pay it)."""
    waiting = select(Image.id).where(_IN_REVIEW_QUEUE)
    if cap is not None:
        waiting = waiting.limit(cap)
    query = select(func.count()).select_from(waiting.subquery())
    return int(session.execute(query).scalar_one())


@dataclass(frozen=True, slots=True)
class SeenAt:
    path: str
    first_seen_at: str | None
    last_seen_at: str | None


@dataclass(frozen=True, slots=True)
class PastPrediction:
    model_version: str
    model_version_id: int
    label: str
    confidence: float
    topk: list[Any]
    created_at: str | None


@dataclass(frozen=True, slots=True)
class ImageDetail:
    item: ResultRow
    size: int
    margin: float | None
    paths: list[SeenAt]
    predictions: list[PastPrediction]
    labels: list[LabelAct] = field(default_factory=list)


def image_detail(session: Session, sha256: str) -> ImageDetail | None:
    row = session.execute(
        result_columns()
        .add_columns(Image.size, Image.margin, _latest_path().label("path"))
        .where(Image.sha256 == sha256)
    ).first()
    if row is None:
        return None
    paths = [
        SeenAt(p.path, iso(p.first_seen_at), iso(p.last_seen_at))
        for p in session.scalars(
            select(ImagePath)
            .where(ImagePath.image_id == row.id)
            .order_by(ImagePath.last_seen_at.desc(), ImagePath.id.desc())
        )
    ]
    predictions = [
        PastPrediction(name, version_id, label, confidence, topk or [], iso(created))
        for name, version_id, label, confidence, topk, created in session.execute(
            select(
                ModelVersion.name,
                Prediction.model_version_id,
                Prediction.label,
                Prediction.confidence,
                Prediction.topk,
                Prediction.created_at,
            )
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.image_id == row.id)
            .order_by(Prediction.id.desc())
        )
    ]
    return ImageDetail(
        item=ResultRow.of(row, row.path or ""),
        size=row.size,
        margin=row.margin,
        paths=paths,
        predictions=predictions,
        labels=history(session, row.id),
    )


def label_counts(session: Session, limit: int = 100) -> list[tuple[str, int]]:
    """The labels shown on classified images, most common first."""
    label = effective_label()
    query = (
        select(label, func.count())
        .where(label.is_not(None))
        .group_by(label)
        .order_by(func.count().desc(), label)
        .limit(limit)
    )
    return [(str(name), int(n)) for name, n in session.execute(query)]


def failure_counts(session: Session) -> list[tuple[str, int]]:
    """Failed images per failure kind, most common first."""
    query = (
        select(Image.error_kind, func.count())
        .where(Image.status == ImageStatus.FAILED)
        .group_by(Image.error_kind)
        .order_by(func.count().desc())
    )
    return [(str(kind or "other"), int(n)) for kind, n in session.execute(query)]


def failed_page(
    session: Session, kind: str | None = None, cursor: str | None = None, limit: int = 100
) -> Page:
    """Failed images (newest first), of one kind or all, with their latest path."""
    limit = max(1, min(limit, MAX_PAGE))
    query = (
        result_columns()
        .add_columns(_latest_path().label("path"))
        .where(Image.status == ImageStatus.FAILED)
    )
    if kind is not None:
        query = query.where(Image.error_kind == kind)
    if cursor:  # an empty one (a form's empty field) is the first page
        (image_id,) = decode_cursor(cursor, f"failed:{kind or ''}", (int,))
        query = query.where(Image.id < image_id)
    rows = session.execute(query.order_by(Image.id.desc()).limit(limit + 1)).all()
    items = [ResultRow.of(r, r.path or "") for r in rows[:limit]]
    next_cursor = (
        encode_cursor(f"failed:{kind or ''}", [rows[limit - 1].id]) if len(rows) > limit else None
    )
    return Page(items, next_cursor)


@dataclass(frozen=True, slots=True)
class WorkPerMinute:
    """The model's work in each of the last minutes, oldest first: images classified for the
    first time, and images rescored by a newer version (each a prediction row)."""

    classified: list[int]
    rescored: list[int]

    @property
    def peak(self) -> int:
        return max([c + r for c, r in zip(self.classified, self.rescored, strict=True)] or [0])


def work_per_minute(session: Session, minutes: int = 60) -> WorkPerMinute:
    """Predictions made in each of the last ``minutes`` minutes, split into first results and
    rescorings (a prediction with an earlier one for the same image). Counting images by their
    latest result would lose the first result of every image rescored since."""
    start = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    bucket = _minutes_since(session, start, Prediction.created_at)
    earlier = aliased(Prediction)
    rescoring = (
        select(earlier.id)
        .where(earlier.image_id == Prediction.image_id, earlier.id < Prediction.id)
        .exists()
    )
    kind = case((rescoring, 1), else_=0)
    counts = {
        (int(minute), int(again)): int(n)
        for minute, again, n in session.execute(
            select(bucket, kind, func.count())
            .where(Prediction.created_at >= start)
            .group_by(bucket, kind)
        )
        if minute is not None
    }
    return WorkPerMinute(
        [counts.get((i, 0), 0) for i in range(minutes)],
        [counts.get((i, 1), 0) for i in range(minutes)],
    )


def _minutes_since(session: Session, start: datetime, column: Any) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        # Stored as ISO text; julianday() parses it (days, fractional).
        since = start.strftime("%Y-%m-%d %H:%M:%S")
        return cast((func.julianday(column) - func.julianday(since)) * 1440, Integer)
    return func.floor(func.extract("epoch", column - start) / 60)
