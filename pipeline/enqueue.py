"""Sending work to the classify queue, then marking it sent in the ledger: the one way every
producer does it (the watcher's publisher, the reconciler, a retry of failed images, a rescore).

Rows are ``queued`` in the ledger before they are sent, so whatever fails here is sent again by
the reconciler: a message the broker refused leaves its rows unmarked (``enqueued_at`` empty),
and a mark that fails after the send leaves them looking unsent (a harmless duplicate later,
unless the caller retries the mark, as the watcher does)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from broker.send import send_classify
from contract.chunks import chunked
from contract.messages import WorkItem
from db.engine import transaction
from db.ledger import mark_enqueued


@dataclass(frozen=True)
class Enqueued:
    items: int
    messages: int


class PartlySent(RuntimeError):
    """Enqueueing stopped part-way: ``sent`` went to the broker (in order, a prefix of the
    items), and were marked in the ledger if ``marked``."""

    def __init__(self, sent: Sequence[WorkItem], marked: bool, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.sent = list(sent)
        self.marked = marked
        self.cause = cause


def enqueue(
    app: Celery,
    sessions: sessionmaker[Session],
    items: Sequence[WorkItem],
    files_per_message: int,
) -> Enqueued:
    """Send ``items``, ``files_per_message`` per message, then mark them enqueued in one
    transaction. Raises :class:`PartlySent` when the broker or the ledger fails part-way, saying
    exactly what went out and whether it is marked."""
    sent: list[WorkItem] = []
    messages = 0
    try:
        for chunk in chunked(items, files_per_message):
            send_classify(app, chunk, files_per_message)
            sent.extend(chunk)
            messages += 1
    except Exception as exc:
        try:
            mark(sessions, sent)
        except Exception:
            raise PartlySent(sent, False, exc) from exc
        raise PartlySent(sent, True, exc) from exc
    try:
        mark(sessions, sent)
    except Exception as exc:
        raise PartlySent(sent, False, exc) from exc
    return Enqueued(len(sent), messages)


def mark(sessions: sessionmaker[Session], items: Sequence[WorkItem]) -> None:
    """Stamp ``items`` as sent (their rows' ``enqueued_at``), in one transaction."""
    if items:
        with transaction(sessions) as session:
            mark_enqueued(session, [i.sha256 for i in items])
