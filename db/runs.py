"""The training-run state machine in the ledger.

A ``training_runs`` row goes ``running`` -> ``promoted`` / ``rejected`` / ``skipped`` /
``failed`` / ``cancelled`` (:func:`request_cancel`). A row created by a request that waits for
a worker (the CLI's or the web app's ``retrain``) is ``running`` with progress phase
``queued`` until a worker claims it. A running run stamps ``progress.heartbeat`` while it
lives; a row whose heartbeat went silent belongs to a process that died, and the next run to
take the lock marks it failed (:func:`reap_stale`). Each function runs inside the caller's
transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.clock import as_utc, iso, utcnow
from db.models import ModelStatus, ModelVersion, RunStatus, TrainingRun

log = logging.getLogger(__name__)

QUEUED = "queued"  # progress phase of a run row created by a request, waiting for a worker
QUEUED_STALE = timedelta(days=1)  # a queued run never picked up in this long: message lost


@dataclass(frozen=True)
class RunState:
    """A run as the ledger has it: what a redelivered request for a finished run returns."""

    run_id: int
    status: str
    message: str
    version_id: int | None


def _is_queued(run: TrainingRun) -> bool:
    return (run.progress or {}).get("phase") == QUEUED


def create_queued(session: Session, trigger: str = "manual") -> int:
    """A run row for a request that a worker will pick up."""
    run = TrainingRun(
        status=RunStatus.RUNNING.value,
        trigger=trigger,
        message="waiting for a training worker",
        progress={"phase": QUEUED},
    )
    session.add(run)
    session.flush()
    return run.id


def claim(session: Session, run_id: int | None, trigger: str) -> tuple[int, RunState | None]:
    """Take (or create) a run's row for this process. Returns ``(run_id, None)``, or the
    state of a run that already finished (a redelivered request: nothing to do)."""
    run = session.get(TrainingRun, run_id) if run_id is not None else None
    if run is not None and run.status != RunStatus.RUNNING:
        return run.id, RunState(run.id, run.status, run.message or "", run.model_version_id)
    if run is None:
        run = TrainingRun(trigger=trigger, status=RunStatus.RUNNING.value)
        session.add(run)
    else:
        if (run.progress or {}).get("phase") not in (None, QUEUED):
            log.warning("run %d was interrupted; starting it again", run.id)
        run.started_at = utcnow()
    run.message = "training"
    run.progress = {"phase": "starting", "heartbeat": iso(utcnow())}
    session.flush()
    return run.id, None


def write_progress(session: Session, run_id: int, progress: dict[str, Any]) -> None:
    run = session.get(TrainingRun, run_id)
    if run is not None:
        run.progress = progress


def finish(
    session: Session,
    run_id: int | None,
    *,
    trigger: str,
    status: RunStatus,
    message: str,
    progress: dict[str, Any],
    version_id: int | None = None,
) -> int:
    """Record how a run ended (creating its row if it never had one). Returns its id."""
    run = session.get(TrainingRun, run_id) if run_id is not None else None
    if run is None:
        run = TrainingRun(trigger=trigger)
        session.add(run)
    run.status = status.value
    run.message = message
    run.progress = progress
    run.finished_at = utcnow()
    if version_id is not None:
        run.model_version_id = version_id
    session.flush()
    return run.id


def fail(session: Session, run_id: int, message: str) -> None:
    """Mark a run failed before it started (its request could not be sent)."""
    run = session.get(TrainingRun, run_id)
    if run is not None:
        run.status = RunStatus.FAILED.value
        run.message = message
        run.finished_at = utcnow()


def live_runs(session: Session, other_than: int | None) -> list[int]:
    """Ids of runs that a worker is running now (not queued), newest first."""
    running = session.scalars(
        select(TrainingRun)
        .where(TrainingRun.status == RunStatus.RUNNING, TrainingRun.id != (other_than or -1))
        .order_by(TrainingRun.id.desc())
    ).all()
    return [r.id for r in running if not _is_queued(r)]


def busy_state(session: Session, run_id: int | None) -> RunState | None:
    """When the training lock is taken: the state of ``run_id`` if it must be left alone (it
    finished, or it is running elsewhere: a redelivered request of a live run), else None
    (it is a queued row of ours, to be marked skipped)."""
    run = session.get(TrainingRun, run_id) if run_id is not None else None
    if run is None or (run.status == RunStatus.RUNNING and _is_queued(run)):
        return None
    return RunState(run.id, run.status, run.message or "", run.model_version_id)


def reap_stale(session: Session, run_id: int, stale_after: timedelta) -> int | None:
    """Holding the training lock: every other running row is a dead run, unless its
    heartbeat is younger than ``stale_after`` (a live run that lost its Redis lock), whose id
    is returned. Dead runs are marked failed and their unsaved candidates rejected; queued
    rows never picked up within :data:`QUEUED_STALE` are failed too."""
    now = utcnow()
    others = session.scalars(
        select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING, TrainingRun.id != run_id)
    ).all()
    for run in others:
        if _is_queued(run):
            if now - as_utc(run.started_at) > QUEUED_STALE:
                run.status = RunStatus.FAILED.value
                run.message = "never picked up by a training worker"
                run.finished_at = now
            continue
        beat = _heartbeat(run)
        if now - beat < stale_after:
            return run.id
        run.status = RunStatus.FAILED.value
        run.message = (
            f"interrupted: no heartbeat since {iso(beat)} (the process running "
            "it died); nothing it wrote was promoted"
        )
        run.finished_at = now
        if run.model_version_id is not None:
            version = session.get(ModelVersion, run.model_version_id)
            if version is not None and version.status == ModelStatus.CANDIDATE:
                version.status = ModelStatus.REJECTED.value
                version.reason = f"run {run.id} was interrupted before it finished"
        log.warning("marked stale training run %d failed", run.id)
    return None


def _heartbeat(run: TrainingRun) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(str((run.progress or {})["heartbeat"])))
    except (KeyError, ValueError):
        return as_utc(run.started_at)


@dataclass(frozen=True)
class RunView:
    """A run as the web app and the CLI show it."""

    id: int
    status: str
    trigger: str
    message: str | None
    progress: dict[str, Any]
    model_version_id: int | None
    started_at: str | None
    finished_at: str | None
    cancel_requested: bool = False

    @classmethod
    def of(cls, run: TrainingRun) -> RunView:
        return cls(
            run.id,
            run.status,
            run.trigger,
            run.message,
            dict(run.progress or {}),
            run.model_version_id,
            iso(run.started_at),
            iso(run.finished_at),
            run.cancel_requested_at is not None,
        )


def recent(session: Session, limit: int = 20) -> list[RunView]:
    rows = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit))
    return [RunView.of(r) for r in rows]


def get(session: Session, run_id: int) -> RunView | None:
    run = session.get(TrainingRun, run_id)
    return RunView.of(run) if run is not None else None


def open_run(session: Session, trigger: str) -> int | None:
    """The newest run of ``trigger`` that is queued or running, or None."""
    query = (
        select(TrainingRun.id)
        .where(TrainingRun.status == RunStatus.RUNNING, TrainingRun.trigger == trigger)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def pending(session: Session) -> bool:
    """A run is queued or running: a new request would only wait behind it."""
    query = select(TrainingRun.id).where(TrainingRun.status == RunStatus.RUNNING).limit(1)
    return session.scalars(query).first() is not None


def last_started_at(session: Session) -> datetime | None:
    """When the newest run started (its labeled data was read after that)."""
    moment = session.scalars(
        select(TrainingRun.started_at).order_by(TrainingRun.id.desc()).limit(1)
    ).first()
    return as_utc(moment) if moment is not None else None


@dataclass(frozen=True)
class CancelOutcome:
    status: str  # the run's status after the request
    message: str


def request_cancel(session: Session, run_id: int) -> CancelOutcome | None:
    """Ask run ``run_id`` to stop. A run still waiting for a worker is cancelled at once (a
    worker that later takes its message finds it finished); a running one is flagged, and its
    worker ends it at its next heartbeat or epoch. None: no such run."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        return None
    if run.status != RunStatus.RUNNING:
        return CancelOutcome(run.status, f"run {run_id} already ended: {run.status}")
    if _is_queued(run):
        run.status = RunStatus.CANCELLED.value
        run.message = "cancelled before a training worker took it"
        run.finished_at = utcnow()
        run.progress = {**(run.progress or {}), "phase": RunStatus.CANCELLED.value}
        return CancelOutcome(run.status, run.message)
    if run.cancel_requested_at is None:
        run.cancel_requested_at = utcnow()
    return CancelOutcome(run.status, f"run {run_id} was asked to stop")


def cancel_requested(session: Session, run_id: int) -> bool:
    moment = session.scalars(
        select(TrainingRun.cancel_requested_at).where(TrainingRun.id == run_id)
    ).first()
    return moment is not None
