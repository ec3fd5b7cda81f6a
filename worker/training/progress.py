"""A run's progress: events for the caller (the CLI prints them), the latest snapshot in its
``training_runs`` row (throttled for frequent events), and how the run ended.

The snapshot keeps the phases so far (``phase_log``) and every epoch's record (``epoch_log``),
so a reader that polls the row (``retrain --wait``, the web app) misses none of them however
fast they go. It also carries whether someone asked the run to stop (:class:`RunCancelled`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from sqlalchemy.orm import Session, sessionmaker

from contract.clock import iso, utcnow
from contract.messages import Trigger
from contract.reports import ProgressEvent, TrainingReport
from db import runs
from db.engine import transaction
from db.models import RunStatus

log = logging.getLogger(__name__)

Progress = Callable[[ProgressEvent], None]

PROGRESS_WRITE_INTERVAL_S = 1.0

#: What each epoch leaves in the run row's ``epoch_log``.
EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


class RunCancelled(Exception):
    """Someone asked this run to stop (``retrain --cancel``)."""


@dataclass
class RunOutcome:
    run_id: int | None
    status: str
    message: str
    version_id: int | None = None
    version_name: str | None = None
    report: TrainingReport | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("report")
        return data

    @classmethod
    def of(cls, state: runs.RunState, message: str | None = None) -> RunOutcome:
        return cls(state.run_id, state.status, message or state.message, state.version_id)


class RunRecorder:
    """Emits a run's events and keeps its ledger row up to date. Thread-safe: the lock's
    heartbeat thread stamps the row while the run's thread works."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        trigger: Trigger,
        run_id: int | None,
        on_progress: Progress | None,
    ) -> None:
        self.sessions = sessions
        self.trigger = trigger
        self.run_id = run_id
        self.on_progress = on_progress
        self.progress: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._written_at = 0.0
        self.cancel_requested = False

    def emit(self, event: str, write: bool = True, **values: Any) -> None:
        """Update the progress, tell the caller, and write it to the run row (``write=False``:
        at most every PROGRESS_WRITE_INTERVAL_S)."""
        with self._lock:
            self.progress.update(values)
            # New lists rather than appends: a snapshot already handed out (being written to
            # the row on another thread) keeps the list it had.
            phases = self.progress.get("phase_log", [])
            if event == "phase" and (not phases or phases[-1] != values["phase"]):
                self.progress["phase_log"] = [*phases, values["phase"]]
            if event == "epoch":
                entry = {k: values[k] for k in EPOCH_KEYS if k in values}
                self.progress["epoch_log"] = [*self.progress.get("epoch_log", []), entry]
            self.progress["heartbeat"] = iso(utcnow())
            snapshot = dict(self.progress)
            due = write or time.monotonic() - self._written_at >= PROGRESS_WRITE_INTERVAL_S
            if due:
                self._written_at = time.monotonic()
        if due and self.run_id is not None:
            with transaction(self.sessions) as session:
                runs.write_progress(session, self.run_id, snapshot)
        if self.on_progress is not None:
            self.on_progress(cast(ProgressEvent, {"event": event, **snapshot}))

    def phase(self, phase: str, **values: Any) -> None:
        self.emit("phase", phase=phase, **values)

    def warn(self, message: str) -> None:
        if self.on_progress is None:  # a caller with a progress callback shows it itself
            log.warning("%s", message)
        self.emit("warning", write=False, last_warning=message)

    def heartbeat(self) -> None:
        self.emit("heartbeat")
        self.poll_cancel()

    def poll_cancel(self) -> bool:
        """Read whether the run was asked to stop (remembered once seen)."""
        if not self.cancel_requested and self.run_id is not None:
            with transaction(self.sessions) as session:
                self.cancel_requested = runs.cancel_requested(session, self.run_id)
        return self.cancel_requested

    def started(self, run_id: int) -> None:
        self.run_id = run_id
        with self._lock:
            self.progress = {"phase": "starting"}

    def skip_busy(self) -> RunOutcome:
        """The training lock is taken. A queued row of ours is marked skipped; a row that is
        running elsewhere (a redelivered message of a live run) or finished is left alone."""
        with transaction(self.sessions) as session:
            live = runs.live_runs(session, other_than=self.run_id)
            state = runs.busy_state(session, self.run_id)
        which = f" (run {live[0]})" if live else ""
        message = f"another training run is in progress{which}: not started twice"
        if state is not None:
            return RunOutcome.of(state, message)
        return self.finish(RunStatus.SKIPPED, message)

    def finish(
        self,
        status: RunStatus,
        message: str,
        version_id: int | None = None,
        version_name: str | None = None,
        report: TrainingReport | None = None,
    ) -> RunOutcome:
        with self._lock:
            self.progress["phase"] = status.value
            self.progress["heartbeat"] = iso(utcnow())
            snapshot = dict(self.progress)
        with transaction(self.sessions) as session:
            self.run_id = runs.finish(
                session,
                self.run_id,
                trigger=self.trigger,
                status=status,
                message=message,
                progress=snapshot,
                version_id=version_id,
            )
        level = logging.WARNING if status == RunStatus.FAILED else logging.INFO
        log.log(level, "training run %s %s: %s", self.run_id, status.value, message)
        outcome = RunOutcome(self.run_id, status.value, message, version_id, version_name, report)
        if self.on_progress is not None:
            event = {"event": "finished", **snapshot, **outcome.to_dict()}
            self.on_progress(cast(ProgressEvent, event))
        return outcome
