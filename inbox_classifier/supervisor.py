"""`up`: every role of the pipeline as child processes of one supervisor, on one machine.

Children run in their own process group so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in order: the watcher first (no new work), then beat, then the workers
(SIGTERM = Celery's warm shutdown: batches in flight finish and are committed), Redis last.
A child that dies is restarted with backoff. Nothing is lost across a restart: rows still
`queued` in the ledger are sent again by the reconciler.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from broker.locate import url_file
from contract.backoff import backoff_delay
from contract.queues import CLASSIFY_QUEUE, TRAIN_QUEUE
from contract.settings import Settings
from db import migrate
from inbox_classifier.redis_server import RedisServer

log = logging.getLogger("inbox_classifier.up")

STOP_TIMEOUT_S = 60.0
MAX_RESTART_DELAY_S = 30.0


def visible_gpus() -> list[str]:
    """GPU ids this machine offers, without touching CUDA in this (parent) process."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [d.strip() for d in pinned.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inbox_classifier", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

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
    settings: Settings, workers: int | None, trainer: bool, beat: bool
) -> list[Child]:
    env = settings.with_env()
    children = [Child("watcher", ["watch"], env)]
    gpus = visible_gpus()
    count = workers or max(1, len(gpus))
    for i in range(count):
        child_env = dict(env)
        if gpus:
            child_env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        device = f"gpu{gpus[i % len(gpus)]}" if gpus else f"cpu{i}"
        children.append(
            Child(
                f"worker-{device}",
                ["worker", "--queues", CLASSIFY_QUEUE, "--name", f"classify-{device}@%h"],
                child_env,
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
    return children


def run_pipeline(settings: Settings, workers: int | None, trainer: bool, beat: bool) -> int:
    for folder in (settings.data_dir, settings.inbox, settings.labeled_path):
        folder.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(
        update={
            "data_dir": settings.data_dir.resolve(),
            "inbox": settings.inbox.resolve(),
        }
    )
    from worker.modelzoo import ModelError, ensure_weights

    try:
        ensure_weights(settings.model, settings.weights)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    migrate.upgrade(settings.db_url)

    redis_server: RedisServer | None = None
    if not settings.redis_url:
        redis_server = RedisServer(settings.data_dir / "redis", persist=True)
        url = redis_server.start()
        url_file(settings).write_text(url)
        settings = settings.model_copy(update={"redis_url": url})
        log.info("private Redis at %s", url)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping (signal %d)...", signum)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    children = plan_children(settings, workers, trainer, beat)
    for child in children:
        child.start()
    log.info("watching %s; results in %s", settings.inbox, settings.db_url)
    try:
        while not stopping.wait(0.5):
            _restart_dead(children)
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
        if redis_server is not None:
            redis_server.stop()
            url_file(settings).unlink(missing_ok=True)
        log.info("stopped")
    return 0


def _restart_dead(children: list[Child]) -> None:
    now = time.monotonic()
    for child in children:
        if child.alive() or child.process is None:
            continue
        if child.next_start == 0.0:
            code = child.process.returncode
            # A child that ran a while before dying starts over with a short delay.
            if now - child.started_at > 60:
                child.restarts = 0
            delay = backoff_delay(child.restarts + 1, base=1.0, cap=MAX_RESTART_DELAY_S)
            child.next_start = now + delay
            log.error("%s exited with %s; restarting in %.0fs", child.name, code, delay)
        elif now >= child.next_start:
            child.restarts += 1
            child.next_start = 0.0
            child.start()
