"""How many threads a training run uses, chosen before each epoch from what else is running.

A trainer on the same cores as busy classify workers, each side running as many threads as
there are cores, makes both crawl: OpenMP threads that wait spin for the core another
process holds, and a 10 s epoch took 127-214 s beside another run on 2 cores. So before each
epoch the trainer measures how much CPU the rest of the machine used over a short window
(from /proc/stat, less its own use from /proc/self/stat) and takes the cores left, at least
one. ``TORCH_THREADS`` fixes the number instead. The report lists the threads of each epoch
and why.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from contract.reports import ThreadsReport
from worker.model.layout import usable_cores

SAMPLE_S = 0.25  # how long each look at the machine takes
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str
    others_busy: float | None = None  # cores the rest of the machine kept busy


def _machine_busy_ticks() -> int | None:
    """CPU ticks spent busy on the whole machine so far (not idle, not waiting on I/O)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle


def _own_ticks() -> int | None:
    """CPU ticks this process (all its threads) has used so far."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


def others_busy_cores(sample_s: float = SAMPLE_S) -> float | None:
    """How many cores other processes kept busy over the next ``sample_s`` seconds (None
    where /proc cannot tell)."""
    machine0, own0 = _machine_busy_ticks(), _own_ticks()
    if machine0 is None or own0 is None:
        return None
    time.sleep(sample_s)
    machine1, own1 = _machine_busy_ticks(), _own_ticks()
    if machine1 is None or own1 is None:
        return None
    return max(0.0, ((machine1 - machine0) - (own1 - own0)) / TICKS / sample_s)


class ThreadChooser:
    """Chooses the trainer's threads before each epoch (:meth:`choose`) and applies them."""

    def __init__(self, configured: int | None, device: torch.device, cores: int | None = None):
        self.configured = configured
        self.device = device
        self.cores = cores or usable_cores()
        self.choices: list[ThreadChoice] = []

    def choose(self) -> ThreadChoice:
        if self.configured:
            choice = ThreadChoice(self.configured, f"TORCH_THREADS={self.configured}")
        elif self.device.type != "cpu":
            choice = ThreadChoice(
                min(2, self.cores), f"training on {self.device.type}: the CPU only feeds it"
            )
        else:
            choice = self._from_load()
        if torch.get_num_threads() != choice.threads:
            torch.set_num_threads(choice.threads)
        self.choices.append(choice)
        return choice

    def _from_load(self) -> ThreadChoice:
        busy = others_busy_cores()
        if busy is None:
            return ThreadChoice(self.cores, f"all {self.cores} cores (the load cannot be read)")
        taken = round(busy)
        threads = max(1, self.cores - taken)
        if threads == self.cores:
            return ThreadChoice(
                threads, f"all {self.cores} cores: the rest of the machine used {busy:.1f}", busy
            )
        return ThreadChoice(
            threads,
            f"{threads} of {self.cores} cores: other processes (classify workers?) kept "
            f"{busy:.1f} busy, and sharing a core makes both sides crawl",
            busy,
        )

    def summary(self) -> ThreadsReport:
        """For the report: the threads of each epoch, and the reasons given."""
        reasons = list(dict.fromkeys(c.reason for c in self.choices))
        return ThreadsReport(
            cores=self.cores, per_epoch=[c.threads for c in self.choices], reasons=reasons[:5]
        )


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """A run's threads (the chooser changes them per epoch), restored when it ends."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
