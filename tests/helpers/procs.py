"""Run the real `inbox-classifier` roles as child processes, the way users run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from contract.settings import Settings


def cli(
    settings: Settings, *args: str, log: Path, prefix: Sequence[str] = (), **env: str
) -> subprocess.Popen[bytes]:
    """``prefix`` runs it through another command, e.g. ``ip netns exec <host>``."""
    child_env = settings.with_env()
    child_env.update(env)
    child_env["PYTHONUNBUFFERED"] = "1"
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "inbox_classifier", *args],
        env=child_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def finished(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run an `inbox-classifier` command to its end, its output captured (a check that
    refuses to start, a one-shot command)."""
    return subprocess.run(
        [sys.executable, "-m", "inbox_classifier", *args],
        env=settings.with_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@contextmanager
def running(
    settings: Settings, *args: str, log: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    process = cli(settings, *args, log=log, **env)
    try:
        yield process
    finally:
        stop(process)
