"""The Celery task ``inbox_classifier.retrain`` (queue ``train``): scheduled by beat, or sent
by ``inbox-classifier retrain`` (and the web app) with the id of the run row it created."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from contract.messages import BadMessage, RetrainRequest
from contract.queues import TASK_RETRAIN
from contract.settings import Settings
from db.engine import LazySessions

log = logging.getLogger(__name__)


def register_training_task(app: Celery, settings: Settings) -> None:
    """Define the retrain task on ``app``. Only one training runs at a time, whatever the
    number of train workers: a second message finds the lock taken and records 'skipped'."""
    sessions = LazySessions(settings.db_url)

    # shared=False: the task closes over this app's settings; never lend it to other apps.
    @app.task(name=TASK_RETRAIN, bind=True, acks_late=True, ignore_result=True, shared=False)
    def retrain(self: Task, payload: Any) -> dict[str, Any]:
        try:
            request = RetrainRequest.decode(payload)
        except BadMessage:
            log.exception("dropping a malformed retrain request")
            return {}
        from worker.training.run import run_training  # torch is imported only when training

        outcome = run_training(
            settings,
            sessions.get(),
            trigger=request.trigger,
            force=request.force,
            run_id=request.run_id,
            fresh=request.fresh,
        )
        return outcome.to_dict()
