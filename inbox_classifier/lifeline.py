"""Every process `up` starts dies with it, however `up` ends (Ctrl-C, SIGTERM, SIGKILL, the OOM
killer), and one data dir has one `up`.

- **Parent-death signal.** Each child (Redis included) asks the kernel, between fork and exec,
  for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``): the roles stop as on Ctrl-C
  (the workers' warm shutdown commits what they hold), Redis saves and exits. The children
  run in sessions of their own, so a terminal's Ctrl-C reaches only `up`; the signal does not
  depend on sessions. The kernel sends it when the *thread* that forked the child ends, so
  `up` starts and restarts its children on its main thread only.
- **A backstop in each role.** A role started by `up` also watches its parent: once `up` is
  gone it has ``GRACE_S`` to stop cleanly, then exits hard (a training run in the middle of
  an epoch would otherwise hold the warm shutdown for minutes).
- **One `up` per data dir.** `up` holds an exclusive ``flock`` on ``<data_dir>/up.lock`` and
  hands the open lock to its children, so the lock is held as long as `up` *or any of its
  children* lives: a second `up` on the same data dir, while the first or its orphans still
  run, stops with the pids it found instead of starting a second watcher and beat beside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Set by `up` in each child's environment: the supervisor's pid (not a setting).
SUPERVISOR_PID_ENV = "INBOX_CLASSIFIER_SUPERVISOR_PID"
LOCK_NAME = "up.lock"
GRACE_S = 10.0  # after `up` died: time to stop cleanly before the backstop exits hard
POLL_S = 1.0

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    function: Callable[..., int] = libc.prctl
    return function


def dies_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the child get ``sig`` when this
    process dies; None where the platform has no such thing. Everything it needs is looked up
    here, before the fork: between fork and exec it only makes two system calls."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request was in place
            os._exit(1)

    return preexec


def follow_supervisor(grace_s: float = GRACE_S) -> threading.Thread | None:
    """In a role `up` started: a daemon thread that exits this process ``grace_s`` after `up`
    is gone, if the parent-death signal did not stop it cleanly by then. No-op for a role
    started by hand."""
    text = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not text.isdigit():
        return None
    supervisor = int(text)
    if os.getppid() != supervisor:  # already orphaned, or not started by `up` after all
        os._exit(1)

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(POLL_S)
        time.sleep(grace_s)
        log.error("`up` (pid %d) is gone; exiting", supervisor)
        os._exit(1)

    thread = threading.Thread(target=watch, name="lifeline", daemon=True)
    thread.start()
    return thread


class AlreadyRunning(RuntimeError):
    """Another `up`, or children an earlier one left behind, use this data dir."""


class DataDirLock:
    """The exclusive lock of one `up` on its data dir (see the module's docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, describe_holders: Callable[[], str]) -> int:
        """Take the lock; returns its descriptor (to hand to the children). Raises
        :class:`AlreadyRunning` with ``describe_holders()`` in its message."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            first = ""
            with contextlib.suppress(OSError):
                first = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            holders = describe_holders()
            raise AlreadyRunning(
                f"another `up` is running on {self.path.parent}"
                + (f" (started as pid {first})" if first else "")
                + (f"; still alive: {holders}" if holders else "")
                + ". Stop it first (Ctrl-C in its terminal, or `kill` those pids), or use "
                "another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return fd

    @staticmethod
    def held(data_dir: Path) -> bool:
        """Whether an `up` (or one of its children) holds the lock on ``data_dir`` now."""
        try:
            fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # our children may still hold it until they exit
            self.fd = None
