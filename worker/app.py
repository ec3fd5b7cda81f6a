"""The Celery application, configured from Settings. Importing this loads no model and touches
no CUDA: producers (the watcher, the CLI) use the same app to send messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

from db.ledger import WorkItem
from inbox_classifier.messages import (
    TASK_CLASSIFY,
    TASK_RECONCILE,
    TASK_RETRAIN,
    chunked,
    encode_items,
)
from inbox_classifier.settings import CLASSIFY_QUEUE, TRAIN_QUEUE, Settings

# How long Redis keeps an unacknowledged message before redelivering it. Recovery from a dead
# worker does not wait for this: the reconciler requeues stuck rows after requeue_after_s.
VISIBILITY_TIMEOUT_S = 3600

PUBLISH_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0.1,
    "interval_step": 0.5,
    "interval_max": 2.0,
}


def make_celery(settings: Settings, broker_url: str | None = None) -> Celery:
    url = broker_url or settings.redis_url
    if not url:
        raise ValueError(
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
    if settings.retrain_cron:
        minute, hour, day, month, weekday = settings.retrain_cron.split()
        schedule["retrain"] = {
            "task": TASK_RETRAIN,
            "schedule": crontab(minute, hour, weekday, day, month),
            "kwargs": {"trigger": "schedule"},
        }
    elif settings.retrain_interval_s:
        schedule["retrain"] = {
            "task": TASK_RETRAIN,
            "schedule": timedelta(seconds=settings.retrain_interval_s),
            "kwargs": {"trigger": "schedule"},
            "options": {"expires": settings.retrain_interval_s},
        }
    return schedule


def send_classify(app: Celery, items: Sequence[WorkItem], files_per_message: int) -> int:
    """Publish ``items``, several per message. Returns how many messages were sent.

    Raises the broker's error after a few quick retries; callers keep the rows queued in the
    ledger, so nothing is lost when Redis is down.
    """
    sent = 0
    for chunk in chunked(items, files_per_message):
        app.send_task(
            TASK_CLASSIFY,
            args=[encode_items(chunk)],
            queue=CLASSIFY_QUEUE,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
        sent += 1
    return sent
