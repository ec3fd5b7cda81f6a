"""Where the watcher's CPU goes, per stage, for the plumbing benchmark and its log: the CPU time
of the threads that ran each stage (stat calls and the stability rule, hashing, recording in the
ledger, publishing to Redis), summed from one file to the next quiet moment, then reported as one
:class:`contract.events.WatcherPeriod`."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from contract import events


class StageClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu: dict[str, float] = {}
        self._files = 0
        self._started: float | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count the calling thread's CPU time inside the block as ``name``'s."""
        before = time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.thread_time() - before)

    def add(self, name: str, cpu_s: float) -> None:
        with self._lock:
            self._cpu[name] = self._cpu.get(name, 0.0) + cpu_s
            if self._started is None:
                self._started = time.monotonic()

    def recorded(self, files: int) -> None:
        with self._lock:
            self._files += files

    def take(self) -> events.WatcherPeriod | None:
        """The period since the last one, if any file was recorded in it; starts a new one."""
        with self._lock:
            if not self._files or self._started is None:
                return None
            period = events.WatcherPeriod(
                files=self._files,
                seconds=round(time.monotonic() - self._started, 3),
                stages_s={name: round(cpu, 4) for name, cpu in self._cpu.items()},
            )
            self._cpu, self._files, self._started = {}, 0, None
        return period
