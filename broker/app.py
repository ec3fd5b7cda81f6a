"""The Celery application, configured from Settings: JSON only, acks after commit, the routes
and beat's schedule. Workers register their tasks on it; producers only send."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

from contract.messages import RetrainRequest, Trigger
from contract.queues import CLASSIFY_QUEUE, TASK_CLASSIFY, TASK_RECONCILE, TASK_RETRAIN, TRAIN_QUEUE
from contract.settings import Settings

# How long Redis keeps an unacknowledged message before redelivering it. Recovery from a dead
# worker does not wait for this: the reconciler requeues stuck rows after requeue_after_s.
VISIBILITY_TIMEOUT_S = 3600


class NoBroker(ValueError):
    """No Redis URL is configured."""


def make_celery(settings: Settings, broker_url: str | None = None) -> Celery:
    url = broker_url or settings.redis_url
    if not url:
        raise NoBroker(
            "no Redis URL: set INBOX_CLASSIFIER_REDIS_URL or --redis-url "
            "(`inbox-classifier up` starts a private Redis for you)"
        )
    app = Celery("inbox_classifier", broker=url, set_as_current=False)
    app.conf.update(
        # JSON only: no pickle anywhere.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # Ack after the batch is committed; a lost worker's messages go back to the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CLASSIFY_QUEUE,
        task_routes={
            TASK_CLASSIFY: {"queue": CLASSIFY_QUEUE},
            TASK_RECONCILE: {"queue": CLASSIFY_QUEUE},
            TASK_RETRAIN: {"queue": TRAIN_QUEUE},
        },
        broker_connection_retry_on_startup=True,
        # Batches in flight when Redis goes away run on and commit (see worker.main).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    schedule: dict[str, dict[str, object]] = {
        "reconcile": {
            "task": TASK_RECONCILE,
            "schedule": timedelta(seconds=settings.reconcile_interval_s),
            "options": {"expires": settings.reconcile_interval_s},
        }
    }
    scheduled = [RetrainRequest(trigger=Trigger.SCHEDULE).encode()]
    if settings.retrain_cron:
        minute, hour, day, month, weekday = settings.retrain_cron.split()
        schedule["retrain"] = {
            "task": TASK_RETRAIN,
            "schedule": crontab(minute, hour, weekday, day, month),
            "args": scheduled,
        }
    elif settings.retrain_interval_s:
        schedule["retrain"] = {
            "task": TASK_RETRAIN,
            "schedule": timedelta(seconds=settings.retrain_interval_s),
            "args": scheduled,
            "options": {"expires": settings.retrain_interval_s},
        }
    return schedule
