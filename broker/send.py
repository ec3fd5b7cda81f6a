"""Sending work: classify messages (several files each) and retrain requests."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from contract.chunks import chunked
from contract.messages import RetrainRequest, WorkItem, encode_classify
from contract.queues import CLASSIFY_QUEUE, TASK_CLASSIFY, TASK_RETRAIN, TRAIN_QUEUE

# Kombu's own quick retries for one publish; beyond them the caller's backoff takes over.
PUBLISH_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0.1,
    "interval_step": 0.5,
    "interval_max": 2.0,
}


def send_classify(app: Celery, items: Sequence[WorkItem], files_per_message: int) -> int:
    """Publish ``items``, several per message. Returns how many messages were sent.

    Raises the broker's error after a few quick retries; callers keep the rows queued in the
    ledger, so nothing is lost when Redis is down.
    """
    sent = 0
    for chunk in chunked(items, files_per_message):
        app.send_task(
            TASK_CLASSIFY,
            args=[encode_classify(chunk)],
            queue=CLASSIFY_QUEUE,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            # What monitors show for the arguments. Celery's default, a safe repr of the
            # whole payload, cost a third of publishing it.
            argsrepr=f"[{len(chunk)} files, the first {chunk[0].path!r:.200}]",
            kwargsrepr="{}",
        )
        sent += 1
    return sent


def send_retrain(app: Celery, request: RetrainRequest) -> None:
    """Publish a retrain request to the ``train`` queue; raises the broker's error."""
    app.send_task(
        TASK_RETRAIN,
        args=[request.encode()],
        queue=TRAIN_QUEUE,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )
