"""A worker's batch, written: one prediction per (image, model version) and the image's current
result, in one transaction, the hot path of the whole pipeline (a writer thread commits every
batch here). The common case, images that all got a result, is written with two prepared
statements run with the driver's ``executemany`` (SQLite's in C, psycopg's pipelined): each
value is bound once, the top-k serialised once per image, no ORM unit of work. What that costs
per image is in docs/performance.md ("The ledger's writes"); failures and the rules for late
duplicates take the general path below it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from contract.chunks import chunked
from contract.clock import as_utc, utcnow
from contract.failures import is_path_failure
from contract.records import Classified, Failed
from db.driver_sql import CHUNK, bound, images_by_hash, is_postgresql, placeholder
from db.models import Image, ImagePath, ImageStatus, Prediction

_PREDICTION_COLUMNS = "image_id, model_version_id, label, confidence, topk, created_at"
_RESULT_COLUMNS = (
    "label", "confidence", "topk", "margin", "needs_review", "sure", "review_score",
    "model_version_id", "classified_at", "updated_at",
)


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


@dataclass(frozen=True)
class SavedBatch:
    """What :func:`save_batch` wrote."""

    updated: int  # images updated, as :func:`save_results` returns
    # When the watcher recorded each image that got its first result in this batch (the
    # drop-to-row latency starts there). Rescored and redelivered images are left out: their
    # created_at is from long before this batch.
    first_results_created_at: list[datetime]
    first_results: frozenset[str] = frozenset()  # their content hashes


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
    for image_id, sha, created_at, classified_at in images_by_hash(
        session, hashes, Image.id, Image.sha256, Image.created_at, Image.classified_at
    ):
        ids[sha] = image_id
        if classified_at is None:
            unclassified_since[sha] = created_at

    known = [c for c in classified if c.sha256 in ids]
    if known:
        _write_results(session.connection(), model_version_id, known, ids, now)
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
    return SavedBatch(
        len(known) + len(bad), [unclassified_since[sha] for sha in first], frozenset(first)
    )


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


def _write_results(
    connection: Connection,
    model_version_id: int,
    known: Sequence[Classified],
    ids: dict[str, int],
    now: datetime,
) -> None:
    """The predictions (a duplicate delivery adds nothing) and each image's result."""
    image_ids = [ids[c.sha256] for c in known]
    topks = [json.dumps(c.topk) for c in known]
    if is_postgresql(connection):
        _write_results_as_arrays(connection, model_version_id, known, image_ids, topks, now)
        return
    mark = placeholder(connection)
    stamp = bound(connection, Prediction.__table__.c.created_at, now)
    predictions = [
        (image_id, model_version_id, c.label, c.confidence, topk, stamp)
        for c, image_id, topk in zip(known, image_ids, topks, strict=True)
    ]
    results = [
        (
            c.label, c.confidence, topk, margin(c), c.needs_review, c.sure, review_score(c),
            model_version_id, stamp, stamp, c.phash, image_id,
        )
        for c, image_id, topk in zip(known, image_ids, topks, strict=True)
    ]
    values = ", ".join([mark] * 6)
    connection.exec_driver_sql(
        f"INSERT INTO predictions ({_PREDICTION_COLUMNS}) VALUES ({values}) "
        "ON CONFLICT (image_id, model_version_id) DO NOTHING",
        predictions,
    )
    assignments = ", ".join(f"{name} = {mark}" for name in _RESULT_COLUMNS)
    connection.exec_driver_sql(
        f"UPDATE images SET status = '{ImageStatus.DONE.value}', error = NULL, "
        f"error_kind = NULL, {assignments}, phash = COALESCE({mark}, phash) WHERE id = {mark}",
        results,
    )


def _write_results_as_arrays(
    connection: Connection,
    model_version_id: int,
    known: Sequence[Classified],
    image_ids: list[int],
    topks: list[str],
    now: datetime,
) -> None:
    """:func:`_write_results` in PostgreSQL: each statement over one array per column.
    ``images.id = ANY(...)`` lets the planner find the rows by key on a table of any size
    (with the join alone, it scans a small or freshly filled table)."""
    labels = [c.label for c in known]
    confidences = [c.confidence for c in known]
    connection.exec_driver_sql(
        f"INSERT INTO predictions ({_PREDICTION_COLUMNS}) "
        "SELECT v.id, %s, v.label, v.confidence, v.topk::json, %s "
        "FROM unnest(%b::int[], %b::text[], %b::float8[], %b::text[]) "
        "AS v(id, label, confidence, topk) "
        "ON CONFLICT (image_id, model_version_id) DO NOTHING",
        (model_version_id, now, image_ids, labels, confidences, topks),
    )
    connection.exec_driver_sql(
        f"UPDATE images SET status = '{ImageStatus.DONE.value}', error = NULL, "
        "error_kind = NULL, label = v.label, confidence = v.confidence, topk = v.topk::json, "
        "margin = v.margin, needs_review = v.needs_review, sure = v.sure, "
        "review_score = v.review_score, model_version_id = %s, classified_at = %s, "
        "updated_at = %s, phash = COALESCE(v.phash, images.phash) "
        "FROM unnest(%b::int[], %b::text[], %b::float8[], %b::text[], %b::float8[], "
        "%b::bool[], %b::bool[], %b::float8[], %b::bytea[]) "
        "AS v(id, label, confidence, topk, margin, needs_review, sure, review_score, phash) "
        "WHERE images.id = v.id AND images.id = ANY(%b::int[])",
        (
            model_version_id, now, now, image_ids, labels, confidences, topks,
            [margin(c) for c in known], [c.needs_review for c in known],
            [c.sure for c in known], [review_score(c) for c in known],
            [c.phash for c in known], image_ids,
        ),
    )
