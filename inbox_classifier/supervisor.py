"""`up`: every role of the pipeline as child processes of one supervisor, on one machine.

Children run in their own process group so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in order: the watcher first (no new work), then beat, then the workers
(SIGTERM = Celery's warm shutdown: batches in flight finish and are committed), Redis last.
A child that dies is restarted with backoff. Nothing is lost across a restart: rows still
`queued` in the ledger are sent again by the reconciler.

Each child's output goes to ``<data_dir>/logs/<child>.log`` (this process's own to
``up.log``); the terminal shows the addresses (web app, each worker's metrics), then one line
per busy period of each worker, the warnings and errors of every child, and the supervisor's
own messages (``inbox_classifier.console``). Each classify worker serves its metrics on its own
port: ``METRICS_PORT``, ``METRICS_PORT + 1``, ... when set, else free ports picked here.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from broker.locate import url_file
from contract import running
from contract.clock import utcnow
from contract.queues import CLASSIFY_QUEUE, TRAIN_QUEUE
from contract.settings import ENV_PREFIX, Settings
from contract.sizing import sized_for_machine, visible_gpus, workers_per_gpu
from db import migrate
from db.queries import WorkDone
from inbox_classifier.children import (
    Child,
    ChildOutput,
    Lifeline,
    PrivateRedis,
    restart_dead,
)
from inbox_classifier.console import Console, route_supervisor_logging
from inbox_classifier.disk import DiskWatch
from inbox_classifier.lifeline import (
    AlreadyRunning,
    DataDirLock,
)
from inbox_classifier.ports import PortError, metrics_ports, url_host, web_port
from inbox_classifier.preflight import (
    MISCONFIGURED,
    Misconfigured,
    check_database,
    check_device_visible,
    check_folders,
    check_layout,
    check_redis,
    check_web,
)
from inbox_classifier.redis_server import RedisServer

# Its INFO records are for the terminal; everything else this process logs reaches it only
# from WARNING on (inbox_classifier.console).
log = logging.getLogger("inbox_classifier.up")
# Details for the log file only (pids, the private Redis's address).
detail = logging.getLogger("inbox_classifier.up.detail")

# How long the stop waits for each child's last lines to reach its log file. A reader whose
# pipe some grandchild still holds open is a daemon thread: it never holds the exit.
READER_JOIN_S = 5.0
METRICS_PORT_ENV = ENV_PREFIX + "METRICS_PORT"


def plan_children(
    settings: Settings, workers: int | None, trainer: bool, beat: bool, web: bool = False
) -> list[Child]:
    env = settings.with_env()
    env[METRICS_PORT_ENV] = "null"  # only classify workers serve metrics, each on its own port
    host = url_host(settings.web_host)
    children = [Child("watcher", ["watch"], env)]
    gpus = visible_gpus() if settings.device != "cpu" else []
    per_gpu = workers_per_gpu(settings, len(gpus), os.cpu_count() or 1) if gpus else 1
    count = workers or max(1, len(gpus) * per_gpu)
    ports = metrics_ports(settings, count, avoid={settings.web_port} if web else set())
    for i, port in enumerate(ports):
        child_env = dict(env)
        child_env[METRICS_PORT_ENV] = str(port)
        device = f"cpu{i}"
        if gpus:
            gpu = gpus[i % len(gpus)]
            child_env["CUDA_VISIBLE_DEVICES"] = gpu
            # worker-gpu0, or worker-gpu0-1, worker-gpu0-2, ... with several per GPU
            nth = i // len(gpus)
            device = f"gpu{gpu}" if count <= len(gpus) else f"gpu{gpu}-{nth + 1}"
        children.append(
            Child(
                f"worker-{device}",
                ["worker", "--queues", CLASSIFY_QUEUE, "--name", f"classify-{device}@%h"],
                child_env,
                url=f"http://{host}:{port}/metrics",
            )
        )
    if trainer:
        train_env = dict(env)
        # Training gets the last GPU; with one GPU it shares it with inference.
        train_env["CUDA_VISIBLE_DEVICES"] = gpus[-1] if gpus else ""
        children.append(
            Child("trainer", ["worker", "--queues", TRAIN_QUEUE, "--name", "train@%h"], train_env)
        )
    if beat:
        children.append(Child("beat", ["beat"], env))
    if web:
        port, note = web_port(settings, avoid=set(ports))
        serve = ["serve", "--host", settings.web_host, "--port", str(port)]
        children.append(Child("web", serve, env, url=f"http://{host}:{port}", note=note))
    return children


def run_pipeline(
    settings: Settings, workers: int | None, trainer: bool, beat: bool, web: bool = True
) -> int:
    check_layout(settings)
    check_folders(settings, inbox=True, labeled=True)
    resolved = {"data_dir": settings.data_dir.resolve()}
    if settings.inbox_bucket is None:
        resolved["inbox"] = settings.inbox.resolve()
    settings = settings.model_copy(update=resolved)
    check_database(settings)
    check_redis(settings)
    check_device_visible(settings, visible_gpus() if settings.device != "cpu" else [])
    if web:
        check_web(settings)
    lock = DataDirLock(settings.data_dir)
    try:
        lock_fd = lock.acquire(lambda: _holders(settings))
    except AlreadyRunning as exc:
        raise Misconfigured("DATA_DIR", settings.data_dir, str(exc)) from None
    try:
        return _run_locked(settings, workers, trainer, beat, web, Lifeline.for_children(lock_fd))
    finally:
        lock.release()


def _work_since(settings: Settings, moment: datetime) -> WorkDone | None:
    """The stop summary's counts, from the ledger (the children's reports miss what a child
    did just before it died); None when the ledger cannot answer (the terminal's tally then)."""
    from db.engine import make_engine, make_sessionmaker, transaction
    from db.queries import work_since

    engine = make_engine(settings.db_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            return work_since(session, moment)
    except Exception as exc:  # the summary must not hide why `up` stopped
        detail.warning("the stop summary comes from the terminal's tally: %s", exc)
        return None
    finally:
        engine.dispose()


def _repair_training_copies(settings: Settings) -> None:
    """labeled/ made to agree with the ledger before anything can train on it."""
    from db.engine import make_engine, make_sessionmaker
    from pipeline.training_copies import repair

    engine = make_engine(settings.db_url)
    try:
        repair(settings.labeled_path, make_sessionmaker(engine))
    finally:
        engine.dispose()


def _holders(settings: Settings) -> str:
    """The live processes recorded in the data dir, for the message of a refused `up`."""
    return ", ".join(f"{r.role} {r.pid}" for r in running.running(settings))


def _run_locked(
    settings: Settings,
    workers: int | None,
    trainer: bool,
    beat: bool,
    web: bool,
    lifeline: Lifeline,
) -> int:
    settings = sized_for_machine(settings)  # before the children read it: the watcher too
    output = ChildOutput(Console(), settings.data_dir / "logs")
    route_supervisor_logging(output.console, output.log_path("up"), log.name)
    from worker.model.modelzoo import ModelError, ensure_weights

    try:
        if settings.inference_backend != "null":
            ensure_weights(settings.model, settings.weights)
    except ModelError as exc:
        log.error("%s", exc)
        return MISCONFIGURED
    migrate.upgrade(settings.db_url)
    _repair_training_copies(settings)
    began = utcnow()

    redis_server: RedisServer | None = None
    if not settings.redis_url:
        redis_server = RedisServer(
            settings.data_dir / "redis",
            persist=True,
            own_session=True,
            preexec_fn=lifeline.preexec_fn,
            pass_fds=lifeline.pass_fds,
        )
        url = redis_server.start()
        url_file(settings).write_text(url)
        settings = settings.model_copy(update={"redis_url": url})
        detail.info("private Redis at %s", url)
    try:
        with running.recorded(settings, "up"):
            broker = PrivateRedis(redis_server) if redis_server is not None else None
            return _supervise(settings, workers, trainer, beat, web, output, lifeline, broker)
    finally:
        if redis_server is not None:
            redis_server.stop()
            url_file(settings).unlink(missing_ok=True)
        done = _work_since(settings, began) or output.tally
        rescored = f", {done.rescored} rescored" if done.rescored else ""
        log.info(
            "stopped: %d image%s classified%s, %d failed, while up ran; logs in %s",
            done.classified,
            "" if done.classified == 1 else "s",
            rescored,
            done.failed,
            output.log_dir,
        )


def _supervise(
    settings: Settings,
    workers: int | None,
    trainer: bool,
    beat: bool,
    web: bool,
    output: ChildOutput,
    lifeline: Lifeline,
    broker: PrivateRedis | None = None,
) -> int:
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping (signal %d)...", signum)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        children = plan_children(settings, workers, trainer, beat, web)
    except PortError as exc:
        log.error("%s", exc)
        return MISCONFIGURED
    _announce(settings, children, output)
    started = time.monotonic()
    web_url = next((c.url for c in children if c.name == "web"), None)
    disk = DiskWatch(written_places(settings))

    def say_ready() -> None:
        where = f"; open {web_url}" if web_url else ""
        log.info(
            "ready in %.1f s: drop images into %s%s",
            time.monotonic() - started,
            settings.inbox_shown,
            where,
        )

    output.tally.wait_for([c.name for c in children if c.name != "beat"], say_ready)
    for child in children:
        child.start(output, lifeline)
    code = 0
    try:
        while not stopping.wait(0.5):
            disk.check()
            if broker is not None:
                broker.heal()
            refused = restart_dead(children, output, lifeline, hold=disk.full)
            if refused is not None:
                log.error(
                    "%s cannot run with these settings (exit %d; the reason is above, and in "
                    "%s); stopping",
                    refused.name,
                    MISCONFIGURED,
                    output.log_path(refused.name),
                )
                code = MISCONFIGURED
                break
    finally:
        _stop_all(children)
    return code


def _announce(settings: Settings, children: list[Child], output: ChildOutput) -> None:
    """Where each part can be reached and where its log goes."""
    for child in children:
        if child.name == "web":
            log.info("web: %s%s", child.url, child.note)
    served = [f"{c.name} {c.url}" for c in children if c.name.startswith("worker-")]
    log.info("metrics: %s", ", ".join(served))
    log.info(
        "watching %s; results in %s; logs in %s (%s)",
        settings.inbox_shown,
        make_url(settings.db_url).render_as_string(hide_password=True),
        output.log_dir,
        ", ".join(output.log_path(name).name for name in ["up", *(c.name for c in children)]),
    )


def _stop_all(children: list[Child]) -> None:
    """The watcher first (nothing new comes in), then beat, then the rest together."""
    for group in (["watcher"], ["beat"]):
        for child in children:
            if child.name in group:
                child.stop()
    threads = [threading.Thread(target=c.stop) for c in children if c.alive()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for child in children:
        if child.reader is not None:
            child.reader.join(READER_JOIN_S)


def written_places(settings: Settings) -> list[Path]:
    """Where the system writes: the data dir, and a SQLite ledger kept elsewhere."""
    from contract.layout import sqlite_file

    places = [settings.data_dir]
    ledger = sqlite_file(settings)
    if ledger is not None and ledger.parent.resolve() != settings.data_dir.resolve():
        places.append(ledger.parent)
    return places
