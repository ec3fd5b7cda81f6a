"""Asking for a training run: by hand (the web app's button, ``inbox-classifier retrain``), on
beat's schedule, or once enough new human labels have arrived (``RETRAIN_AFTER_LABELS``). A run
row is created first and the request goes to the ``train`` queue, where the single-run lock and
the gate take it from there. One queued or running run per trigger: asking again answers with
that run."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from broker.send import send_retrain
from contract.messages import RetrainRequest, Trigger
from db import labels, runs
from db.engine import transaction

log = logging.getLogger(__name__)


class NotSent(RuntimeError):
    """The broker refused the request; the run row says so too."""


@dataclass(frozen=True)
class Requested:
    run_id: int
    new: bool  # False: a run of this trigger was queued or running already; this is it


def request_retrain(
    sessions: sessionmaker[Session],
    app: Celery,
    *,
    trigger: Trigger = Trigger.MANUAL,
    force: bool = False,
    fresh: bool = False,
) -> Requested:
    """Queue a training run, unless one of ``trigger`` is queued or running already (then that
    one is the answer: a second click, or a script retrying, queues nothing more). Raises
    :class:`NotSent` (with the run marked failed) when the broker cannot be reached."""
    with transaction(sessions) as session:
        existing = runs.open_run(session, trigger)
        if existing is not None:
            return Requested(existing, new=False)
        run_id = runs.create_queued(session, trigger)
    send(sessions, app, RetrainRequest(trigger, force=force, run_id=run_id, fresh=fresh))
    return Requested(run_id, new=True)


def queue_if_enough_labels(session: Session, threshold: int) -> int | None:
    """Inside the transaction that stored a label: create a queued ``labels`` run once
    ``threshold`` labels came in since the last run started, unless a run is queued or running
    already. Returns the new run's id, for :func:`send` once the transaction committed."""
    if threshold <= 0 or runs.pending(session):
        return None
    if labels.labeled_since(session, runs.last_started_at(session)) < threshold:
        return None
    return runs.create_queued(session, Trigger.LABELS)


def send(sessions: sessionmaker[Session], app: Celery, request: RetrainRequest) -> None:
    """Send a request whose run row exists; on failure the row is marked failed and
    :class:`NotSent` raised."""
    try:
        send_retrain(app, request)
    except Exception as exc:
        if request.run_id is not None:
            with transaction(sessions) as session:
                runs.fail(session, request.run_id, f"could not send the request: {exc}")
        raise NotSent(f"could not reach the broker: {exc}") from exc
