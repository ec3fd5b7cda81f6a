"""Asking for a training run: by hand (the web app's button, ``inbox-classifier retrain``) or
once enough new human labels have arrived (``RETRAIN_AFTER_LABELS``). Either way a run row is
created first and the request goes to the ``train`` queue, where the single-run lock and the
gate take it from there."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from broker.send import send_retrain
from contract.messages import RetrainRequest
from contract.settings import Settings
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
    trigger: str = "manual",
    force: bool = False,
    fresh: bool = False,
) -> Requested:
    """Queue a training run, unless one of ``trigger`` is queued or running already (then
    that one is the answer: a second click, or a script retrying, queues nothing more).
    Raises :class:`NotSent` (with the run marked failed) when the broker cannot be reached."""
    with transaction(sessions) as session:
        existing = runs.open_run(session, trigger)
        if existing is not None:
            return Requested(existing, new=False)
        run_id = runs.create_queued(session, trigger)
    try:
        send_retrain(app, RetrainRequest(trigger, force=force, run_id=run_id, fresh=fresh))
    except Exception as exc:
        with transaction(sessions) as session:
            runs.fail(session, run_id, f"could not send the request to the broker: {exc}")
        raise NotSent(f"could not reach the broker: {exc}") from exc
    return Requested(run_id, new=True)


def retrain_if_enough_labels(
    settings: Settings, sessions: sessionmaker[Session], app: Celery
) -> int | None:
    """After a label: queue a run once ``retrain_after_labels`` labels came in since the last
    run started, unless one is already queued or running. Returns the new run's id."""
    threshold = settings.retrain_after_labels
    if threshold <= 0:
        return None
    with transaction(sessions) as session:
        if runs.pending(session):
            return None
        fresh_labels = labels.labeled_since(session, runs.last_started_at(session))
    if fresh_labels < threshold:
        return None
    try:
        run_id = request_retrain(sessions, app, trigger="labels").run_id
    except NotSent as exc:
        log.error("%d new labels, but the retrain request failed: %s", fresh_labels, exc)
        return None
    log.info("%d new human labels: training run %d queued", fresh_labels, run_id)
    return run_id
