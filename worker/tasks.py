"""Task definitions, bound to an app and its settings: classify and reconcile (queue
``classify``), retrain (queue ``train``)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import worker_init, worker_ready, worker_shutdown

from broker.app import make_celery
from contract import events
from contract.backoff import backoff_delay
from contract.messages import BadMessage, decode_classify
from contract.queues import TASK_CLASSIFY, TASK_RECONCILE
from contract.settings import Settings
from worker.drift import DriftWatch
from worker.memory import limit_arenas
from worker.metrics import serve_metrics
from worker.reconcile import reconcile
from worker.runtime import WorkerRuntime
from worker.training.task import register_training_task

log = logging.getLogger(__name__)

MAX_TASK_RETRIES = 10
MAX_TASK_RETRY_DELAY_S = 60.0


def register_tasks(app: Celery, settings: Settings) -> WorkerRuntime:
    runtime = WorkerRuntime(settings)
    drift = DriftWatch(settings)

    @app.task(
        name=TASK_CLASSIFY, bind=True, acks_late=True, max_retries=MAX_TASK_RETRIES, shared=False
    )
    def classify(self: Task, payload: Any) -> int:
        try:
            items = decode_classify(payload)
        except BadMessage:
            log.exception("dropping a malformed message")
            return 0
        try:
            runtime.batcher().submit(items).result()
        except Exception as exc:
            # Transient (DB/Redis down, model load hiccup): redeliver later. If retries run
            # out, the rows stay queued and the reconciler sends them again.
            delay = backoff_delay(self.request.retries + 1, base=1.0, cap=MAX_TASK_RETRY_DELAY_S)
            raise self.retry(exc=exc, countdown=delay) from exc
        return len(items)

    @app.task(name=TASK_RECONCILE, ignore_result=True, shared=False)
    def reconcile_task() -> int:
        resent = reconcile(app, settings, runtime.sessions(), in_flight=runtime.in_flight)
        try:  # the reconciler's beat is also the drift watch's (at most every 10 minutes)
            drift.maybe_check(runtime.sessions())
        except Exception:
            log.exception("the drift check failed")
        return resent

    @worker_ready.connect(weak=False)
    def _reconcile_at_start(sender: Any = None, **_: Any) -> None:
        # Recover what a previous crash left behind as soon as a worker is up.
        if getattr(sender, "app", None) is app:
            reconcile_task.apply_async(countdown=1)
            events.emit(events.Ready(role="worker"))

    @worker_init.connect(weak=False)
    def _limit_arenas(sender: Any = None, **_: Any) -> None:
        # Before the pool's threads exist: they then share a few malloc arenas.
        ours = getattr(sender, "app", None) is app
        if ours and settings.malloc_arenas and limit_arenas(settings.malloc_arenas):
            log.info("malloc arenas limited to %d", settings.malloc_arenas)

    @worker_init.connect(weak=False)
    def _serve_metrics(sender: Any = None, **_: Any) -> None:
        # Here, not at import or app creation: only the process that runs the tasks serves.
        if getattr(sender, "app", None) is app:
            serve_metrics(settings, runtime.metrics)

    @worker_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        runtime.close()

    return runtime


def create_worker_app(settings: Settings) -> Celery:
    """The app as a worker runs it: classify/reconcile tasks, and the retrain task."""
    app = make_celery(settings)
    register_tasks(app, settings)
    register_training_task(app, settings)
    return app
