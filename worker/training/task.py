"""The Celery task ``inbox_classifier.retrain`` (queue ``train``): scheduled by beat with
``{"trigger": "schedule"}``, or sent by ``inbox-classifier retrain`` with a run id."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_sessionmaker
from inbox_classifier.messages import TASK_RETRAIN
from inbox_classifier.settings import Settings

log = logging.getLogger(__name__)


class _Sessions:
    """The ledger engine of the process that runs the task, made on first use (never in a
    parent that forks)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None

    def get(self) -> sessionmaker[Session]:
        with self._lock:
            if self._factory is None:
                self._engine = make_engine(self._settings.db_url)
                self._factory = make_sessionmaker(self._engine)
            return self._factory


def register_training_task(app: Celery, settings: Settings) -> None:
    """Define the retrain task on ``app``. Only one training runs at a time, whatever the
    number of train workers: a second message finds the lock taken and records 'skipped'."""
    sessions = _Sessions(settings)

    # shared=False: the task closes over this app's settings; never lend it to other apps.
    @app.task(name=TASK_RETRAIN, bind=True, acks_late=True, ignore_result=True, shared=False)
    def retrain(
        self: Task,
        trigger: str = "manual",
        force: bool = False,
        run_id: int | None = None,
        fresh: bool = False,
    ) -> dict[str, Any]:
        from worker.training.run import run_training  # torch is imported only when training

        outcome = run_training(
            settings,
            sessions.get(),
            trigger=str(trigger),
            force=bool(force),
            run_id=int(run_id) if run_id is not None else None,
            fresh=bool(fresh),
        )
        return outcome.to_dict()
