"""Where a worker is assembled (with worker.main): the task definitions, bound to an app and its
settings (classify and reconcile on queue ``classify``, retrain on queue ``train``), and the
per-process state they share (:class:`WorkerRuntime`)."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from celery import Celery, Task
from celery.signals import (
    task_postrun,
    task_received,
    task_revoked,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.orm import Session, sessionmaker

from broker.app import make_celery
from broker.heartbeat import Holdings
from contract import events
from contract.backoff import backoff_delay
from contract.messages import BadMessage, decode_classify
from contract.queues import TASK_CLASSIFY, TASK_RECONCILE
from contract.settings import Settings
from db.engine import LazySessions
from worker.classify.batching import BatchEngine
from worker.classify.drift import DriftWatch
from worker.classify.memory import limit_arenas
from worker.classify.metrics import WorkerMetrics, serve_metrics
from worker.classify.model_holder import ModelHolder
from worker.classify.reconcile import reconcile
from worker.training.task import register_training_task

log = logging.getLogger(__name__)


# Per-process state of a worker, created lazily on first use in the process that runs the
# tasks (never at import, never in a parent that forks): engine, model, batch engine. Its
# metrics exist from the start (empty until the first batch), so they can be served at once.
class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._sessions = LazySessions(settings.db_url)
        self._batcher: BatchEngine | None = None
        # Messages received (prefetched included) and not finished: task id -> hashes.
        self._received: dict[str, frozenset[str]] = {}
        self.holdings: Holdings | None = None  # said in Redis (worker.main sets it)
        self.metrics = WorkerMetrics()

    def sessions(self) -> sessionmaker[Session]:
        return self._sessions.get()

    def batcher(self) -> BatchEngine:
        sessions = self.sessions()
        with self._lock:
            if self._batcher is None:
                holder = ModelHolder(self.settings, sessions)
                self._batcher = BatchEngine(self.settings, holder, sessions, self.metrics)
            return self._batcher

    def in_flight(self) -> frozenset[str]:
        """Hashes of the images this worker holds: in messages it received (waiting in its
        prefetch or running) and in its batches, not yet committed."""
        with self._lock:
            batcher = self._batcher
            received = frozenset().union(*self._received.values())
        return received | (batcher.in_flight() if batcher is not None else frozenset())

    def received(self, message: str, payload: Any) -> None:
        try:
            hashes = frozenset(item.sha256 for item in decode_classify(payload))
        except BadMessage:
            return  # the task drops it, saying so
        with self._lock:
            self._received[message] = hashes
        if self.holdings is not None:
            self.holdings.add(hashes)

    def finished(self, message: str) -> None:
        with self._lock:
            hashes = self._received.pop(message, frozenset())
        if self.holdings is not None:
            self.holdings.remove(hashes)

    def close(self) -> None:
        with self._lock:
            if self._batcher is not None:
                self._batcher.stop()
                self._batcher = None
        self._sessions.close()
        self.metrics.close()

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

    # What the heartbeat says this worker holds (broker.heartbeat): from the moment a message
    # arrives (prefetched, not started) until its task ends, retries included.
    # From a message's arrival to its task's end (a retry is a new message of the same task).
    @task_received.connect(weak=False)
    def _received(request: Any = None, **_: Any) -> None:
        if request is not None and request.name == TASK_CLASSIFY and request.args:
            runtime.received(request.id, request.args[0])

    @task_postrun.connect(weak=False)
    def _finished(task: Any = None, **_: Any) -> None:
        if task is not None:
            runtime.finished(task.request.id)

    @task_revoked.connect(weak=False)
    def _revoked(request: Any = None, **_: Any) -> None:
        if request is not None:
            runtime.finished(request.id)

    return runtime


#: Each worker app's runtime (the heartbeat reads what it holds).
_RUNTIMES: weakref.WeakKeyDictionary[Celery, WorkerRuntime] = weakref.WeakKeyDictionary()


def create_worker_app(settings: Settings) -> Celery:
    """The app as a worker runs it: classify/reconcile tasks, and the retrain task."""
    app = make_celery(settings)
    _RUNTIMES[app] = register_tasks(app, settings)
    register_training_task(app, settings)
    return app


def runtime_of(app: Celery) -> WorkerRuntime:
    """The runtime :func:`create_worker_app` gave ``app``."""
    return _RUNTIMES[app]
