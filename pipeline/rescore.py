"""Classifying done images again with the active model: after a promotion (the backfill: the
unreviewed rows the old model was least sure of) or on request (``inbox-classifier
reclassify``). The same four steps either way: select, set back to queued, send, mark. Rows a
person labeled keep their label (it is the truth); older predictions stay as history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from contract.messages import WorkItem
from db.engine import transaction
from db.ledger import requeue_done
from db.queries import reclassify_items
from pipeline.enqueue import Enqueued, enqueue


@dataclass(frozen=True)
class Selection:
    """Which done images to rescore: those not classified by ``version_id`` yet, narrowed by
    the rest."""

    version_id: int
    below_confidence: float | None = None
    label: str | None = None
    since: datetime | None = None
    older_version: bool = False  # only rows an older version classified
    unreviewed: bool = False  # leave rows a person labeled alone
    limit: int | None = None  # least confident first


def select(sessions: sessionmaker[Session], which: Selection) -> list[WorkItem]:
    """What :func:`rescore` would send (a dry run)."""
    with transaction(sessions) as session:
        return _select(session, which)


def rescore(
    app: Celery,
    sessions: sessionmaker[Session],
    which: Selection,
    files_per_message: int,
) -> tuple[list[WorkItem], Enqueued]:
    """Set the selected rows back to queued (one transaction), then send and mark them. If
    sending fails the rows stay queued and the reconciler sends them (:class:`PartlySent`
    says how far it got)."""
    with transaction(sessions) as session:
        items = _select(session, which)
        requeue_done(session, [i.sha256 for i in items])
    if not items:
        return items, Enqueued(0, 0)
    return items, enqueue(app, sessions, items, files_per_message)


def _select(session: Session, which: Selection) -> list[WorkItem]:
    return reclassify_items(
        session,
        which.version_id,
        below_confidence=which.below_confidence,
        older_than_version=which.older_version,
        label=which.label,
        since=which.since,
        unreviewed=which.unreviewed,
        limit=which.limit,
    )
