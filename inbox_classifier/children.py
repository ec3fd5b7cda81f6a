"""`up`'s children: how each is started (its output to its log file and the terminal, the
lifeline that makes it die with `up`), stopped, and restarted with backoff when it dies; and
`up`'s private Redis, supervised the same way."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contract.backoff import backoff_delay
from inbox_classifier.console import Console, Tally, follow_output
from inbox_classifier.lifeline import SUPERVISOR_PID_ENV, dies_with_parent
from inbox_classifier.preflight import MISCONFIGURED
from inbox_classifier.redis_server import RedisServer

log = logging.getLogger("inbox_classifier.up")
detail = logging.getLogger("inbox_classifier.up.detail")

STOP_TIMEOUT_S = 60.0
MAX_RESTART_DELAY_S = 30.0


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




def how_it_ended(code: int | None) -> str:
    """A child's return code in words: 'exited with status 1', 'was killed by SIGKILL'."""
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


@dataclass
class PrivateRedis:
    """`up`'s own Redis, supervised like its children: one that dies is reaped, said on the
    terminal with its exit status, and restarted on the same port with backoff (its
    append-only file brings the queue back; what the last second lost, the reconciler
    sends again). The roles reconnect on their own meanwhile."""

    server: RedisServer
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def heal(self) -> None:
        """On `up`'s main thread only (the parent-death signal follows the forking thread)."""
        if self.server.alive():
            return
        now = time.monotonic()
        if self.next_start == 0.0:
            if now - self.started_at > 60:
                self.restarts = 0
            delay = backoff_delay(self.restarts + 1, base=0.5, cap=MAX_RESTART_DELAY_S)
            self.next_start = now + delay
            code = self.server.process.returncode if self.server.process else None
            log.error(
                "redis %s (its log: %s); restarting it in %.1fs: the queue waits, nothing "
                "is lost",
                how_it_ended(code),
                self.server.log_path,
                delay,
            )
            return
        if now < self.next_start:
            return
        self.restarts += 1
        self.next_start = 0.0
        try:
            self.server.start()
        except RuntimeError as exc:
            log.error("could not restart redis: %s", exc)
            return
        self.started_at = time.monotonic()
        log.info("restarted redis on %s", self.server.url)


def restart_dead(
    children: list[Child], output: ChildOutput, lifeline: Lifeline, hold: bool = False
) -> Child | None:
    """Restart dead children with backoff (none while ``hold``: the disk is full); returns a
    child that exited because its settings cannot work (:data:`MISCONFIGURED`): restarting it
    would fail the same way for ever."""
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
                "%s %s (its log: %s); restarting in %.0fs%s",
                child.name,
                how_it_ended(code),
                output.log_path(child.name),
                delay,
                " once the disk has room" if hold else "",
            )
        elif now >= child.next_start and not hold:
            child.restarts += 1
            child.next_start = 0.0
            child.start(output, lifeline)
    return None
