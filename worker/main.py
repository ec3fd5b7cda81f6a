"""The worker's one entry point, as ``watcher.service.run_watcher`` is the watcher's: everything a
worker process does before it serves, in order, then Celery's loop."""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from collections.abc import Collection

from celery import Celery

from broker import heartbeat
from contract import running
from contract.queues import CLASSIFY_QUEUE
from contract.settings import Settings
from contract.sizing import sized_for_machine
from db import migrate
from db.engine import make_engine, make_sessionmaker
from db.versions import RealModelsHere
from worker.classify.model_holder import register_base_model
from worker.model import modelzoo
from worker.model.layout import worker_concurrency
from worker.tasks import create_worker_app, runtime_of

log = logging.getLogger(__name__)


class WorkerRefused(RuntimeError):
    """The worker cannot start with these settings (e.g. weights that cannot be had)."""


def run_worker(
    settings: Settings,
    queues: Collection[str],
    concurrency: int | None = None,
    name: str | None = None,
) -> None:
    """Serve ``queues`` until Celery stops: migrate the ledger; for the classify queue, make
    sure the weights are there and register the base model (so ``status`` names it before the
    first image); size the batches for this machine; hold enough messages to keep the
    inference streams fed. The model itself loads lazily on the first batch, in this process.
    Raises :class:`WorkerRefused`."""
    # When Redis goes away, batches in flight run on and commit; their messages come back
    # (the reconciler, the visibility timeout) and find their rows done. Celery warns that a
    # later release will cancel such tasks instead, on every reconnect: not news to a person.
    warnings.filterwarnings(
        "ignore", message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss"
    )
    # torch says "No CUDA runtime is found, using CUDA_HOME=..." when a CPU machine has a CUDA
    # toolkit folder and something loads its C++ extension helpers (the ONNX export does):
    # about CUDA on a machine that has none, so nothing a person needs to read.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    migrate.upgrade(settings.db_url)
    if CLASSIFY_QUEUE in queues:
        try:
            if settings.inference_backend != "null":
                modelzoo.ensure_weights(settings.model, settings.weights)
            _register_base_model(settings)
        except (modelzoo.ModelError, RealModelsHere) as exc:
            raise WorkerRefused(str(exc)) from exc
    settings = sized_for_machine(settings)
    if concurrency is None:
        concurrency = worker_concurrency(settings) if CLASSIFY_QUEUE in queues else 1
    app = create_worker_app(settings)
    wanted = ",".join(sorted(queues))
    node = name or f"{'+'.join(sorted(queues))}.{os.getpid()}@{socket.gethostname()}"
    alive = threading.Event()
    assert settings.redis_url  # the CLI filled it in (require_broker)
    # Its key in Redis says it is alive (status, the reconciler); Celery expands %h itself.
    node_name = node.replace("%h", socket.gethostname())
    holdings = heartbeat.Holdings(settings.redis_url, node_name)
    runtime_of(app).holdings = holdings
    heartbeat.beat(settings.redis_url, node_name, sorted(queues), alive, holdings)
    with running.recorded(settings, "worker-" + "+".join(sorted(queues))):
        try:
            _serve(app, concurrency, wanted, node)
        finally:
            alive.set()


def _serve(app: Celery, concurrency: int, wanted: str, node: str) -> None:
    """Celery's loop, until it stops."""
    app.worker_main(
        [
            "worker",
            "--pool=threads",  # one process owns the model; threads feed its batches
            f"--concurrency={concurrency}",
            f"--queues={wanted}",
            f"--hostname={node}",
            "--prefetch-multiplier=1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )


def _register_base_model(settings: Settings) -> None:
    """The base model in the ledger as a classify worker starts (its weights are loaded on the
    first batch, in the process that runs it)."""
    engine = make_engine(settings.db_url)
    try:
        active = register_base_model(settings, make_sessionmaker(engine))
    finally:
        engine.dispose()
    log.info("active model: %s (version %d)", active.name, active.id)
