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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from broker.locate import url_file
from contract import running
from contract.backoff import backoff_delay
from contract.queues import CLASSIFY_QUEUE, TRAIN_QUEUE
from contract.settings import ENV_PREFIX, Settings
from contract.sizing import sized_for_machine, visible_gpus, workers_per_gpu
from db import migrate
from inbox_classifier.console import Console, Tally, follow_output, route_supervisor_logging
from inbox_classifier.lifeline import (
    SUPERVISOR_PID_ENV,
    AlreadyRunning,
    DataDirLock,
    dies_with_parent,
)
from inbox_classifier.preflight import (
    MISCONFIGURED,
    Misconfigured,
    check_database,
    check_device_visible,
    check_folders,
    check_redis,
    check_web,
)
from inbox_classifier.redis_server import RedisServer, free_port

# Its INFO records are for the terminal; everything else this process logs reaches it only
# from WARNING on (inbox_classifier.console).
log = logging.getLogger("inbox_classifier.up")
# Details for the log file only (pids, the private Redis's address).
detail = logging.getLogger("inbox_classifier.up.detail")

STOP_TIMEOUT_S = 60.0
MAX_RESTART_DELAY_S = 30.0
# How long the stop waits for each child's last lines to reach its log file. A reader whose
# pipe some grandchild still holds open is a daemon thread: it never holds the exit.
READER_JOIN_S = 5.0
METRICS_PORT_ENV = ENV_PREFIX + "METRICS_PORT"


class PortError(ValueError):
    """The ports asked for cannot be assigned."""


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the servers bind (http.server sets it): a port in TIME_WAIT is free to them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError:
        return False
    return True


def metrics_ports(settings: Settings, count: int, avoid: set[int]) -> list[int]:
    """One metrics port per classify worker: ``metrics_port``, ``metrics_port + 1``, ... when
    set (as given: a worker that finds its port taken says so and runs without metrics), else
    free ports, distinct and not in ``avoid``."""
    if settings.metrics_port is not None:
        last = settings.metrics_port + count - 1
        if last > 65535:
            raise PortError(
                f"{count} workers need metrics ports {settings.metrics_port}-{last}: "
                "past 65535; lower METRICS_PORT"
            )
        return list(range(settings.metrics_port, last + 1))
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


def web_port(settings: Settings, avoid: set[int]) -> tuple[int, str]:
    """``web_port`` if it is free, else a free port; and a note saying why it moved."""
    wanted = settings.web_port
    if wanted not in avoid and port_is_free(settings.web_host, wanted):
        return wanted, ""
    while (port := free_port()) in avoid:
        pass
    why = "a worker's metrics port" if wanted in avoid else "in use"
    return port, f" (port {wanted} is {why})"


def url_host(host: str) -> str:
    """``host`` as it goes into a URL a person can open on this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ChildOutput:
    """Where the children's output goes: each one's own log file, and the terminal."""

    console: Console
    log_dir: Path
    tally: Tally = field(default_factory=Tally)

    def log_path(self, child: str) -> Path:
        return self.log_dir / f"{child}.log"

    def follow(self, child: str, process: subprocess.Popen[bytes]) -> threading.Thread:
        assert process.stdout is not None
        return follow_output(
            child, process.pid, process.stdout, self.log_path(child), self.console, self.tally
        )


@dataclass(frozen=True)
class Lifeline:
    """What every child gets so that it dies with `up` (:mod:`inbox_classifier.lifeline`)."""

    preexec_fn: Callable[[], None] | None = None
    pass_fds: tuple[int, ...] = ()

    @classmethod
    def for_children(cls, lock_fd: int | None) -> Lifeline:
        return cls(dies_with_parent(), (lock_fd,) if lock_fd is not None else ())


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    url: str | None = None  # what a person opens: the web app, or this worker's metrics
    note: str = ""  # why it serves where it does, when that is not where it was asked to
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self, output: ChildOutput, lifeline: Lifeline) -> None:
        """Start it; on `up`'s main thread only (the parent-death signal follows the thread
        that forked the child)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inbox_classifier", *self.args],
            # Unbuffered: its lines reach the log file (and the terminal) as they are written.
            env={**self.env, "PYTHONUNBUFFERED": "1", SUPERVISOR_PID_ENV: str(os.getpid())},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lifeline.preexec_fn,  # two system calls, looked up before the fork
            pass_fds=lifeline.pass_fds,
        )
        self.reader = output.follow(self.name, self.process)
        self.started_at = time.monotonic()
        if self.restarts:
            log.info("restarted %s (pid %d)", self.name, self.process.pid)
        else:
            detail.info("started %s (pid %d)", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


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
    check_folders(settings, inbox=True, labeled=True)
    settings = settings.model_copy(
        update={
            "data_dir": settings.data_dir.resolve(),
            "inbox": settings.inbox.resolve(),
        }
    )
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
    from worker.modelzoo import ModelError, ensure_weights

    try:
        ensure_weights(settings.model, settings.weights)
    except ModelError as exc:
        log.error("%s", exc)
        return MISCONFIGURED
    migrate.upgrade(settings.db_url)

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
            return _supervise(settings, workers, trainer, beat, web, output, lifeline)
    finally:
        if redis_server is not None:
            redis_server.stop()
            url_file(settings).unlink(missing_ok=True)
        tally = output.tally
        rescored = f", {tally.rescored} rescored" if tally.rescored else ""
        log.info(
            "stopped: %d image%s classified%s, %d failed, while up ran; logs in %s",
            tally.classified,
            "" if tally.classified == 1 else "s",
            rescored,
            tally.failed,
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
    for child in children:
        if child.name == "web":
            log.info("web: %s%s", child.url, child.note)
    served = [f"{c.name} {c.url}" for c in children if c.name.startswith("worker-")]
    log.info("metrics: %s", ", ".join(served))
    log.info(
        "watching %s; results in %s; logs in %s (%s)",
        settings.inbox,
        make_url(settings.db_url).render_as_string(hide_password=True),
        output.log_dir,
        ", ".join(output.log_path(name).name for name in ["up", *(c.name for c in children)]),
    )
    started = time.monotonic()
    web_url = next((c.url for c in children if c.name == "web"), None)

    def say_ready() -> None:
        where = f"; open {web_url}" if web_url else ""
        log.info(
            "ready in %.1f s: drop images into %s%s",
            time.monotonic() - started,
            settings.inbox,
            where,
        )

    output.tally.wait_for([c.name for c in children if c.name != "beat"], say_ready)
    for child in children:
        child.start(output, lifeline)
    code = 0
    try:
        while not stopping.wait(0.5):
            refused = _restart_dead(children, output, lifeline)
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
    return code


def _restart_dead(children: list[Child], output: ChildOutput, lifeline: Lifeline) -> Child | None:
    """Restart dead children with backoff; returns a child that exited because its settings
    cannot work (:data:`MISCONFIGURED`): restarting it would fail the same way for ever."""
    now = time.monotonic()
    for child in children:
        if child.alive() or child.process is None:
            continue
        if child.next_start == 0.0:
            code = child.process.returncode
            if code == MISCONFIGURED:
                return child
            # A child that ran a while before dying starts over with a short delay.
            if now - child.started_at > 60:
                child.restarts = 0
            delay = backoff_delay(child.restarts + 1, base=1.0, cap=MAX_RESTART_DELAY_S)
            child.next_start = now + delay
            log.error(
                "%s exited with %s (its log: %s); restarting in %.0fs",
                child.name,
                code,
                output.log_path(child.name),
                delay,
            )
        elif now >= child.next_start:
            child.restarts += 1
            child.next_start = 0.0
            child.start(output, lifeline)
    return None
