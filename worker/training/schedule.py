"""The learning-rate schedule sized to a time budget: ``OneCycle`` warms the rate up over the
first epoch and anneals it by a cosine over the steps planned, and ``EpochPlan`` plans those
epochs from timed ones so the run ends near its deadline."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from worker.training.loop import TrainConfig


class OneCycle:
    """A per-step learning-rate factor: linear warm-up over the first epoch from 1/25, then
    cosine to 1/1000 over the steps :meth:`plan` sets once the first epoch is timed."""

    START, END = 1 / 25, 1 / 1000

    def __init__(self, optimizer: torch.optim.Optimizer, warm_steps: int, total_steps: int | None):
        self.warm = max(1, warm_steps)
        self.total = total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warm:
            return self.START + (1 - self.START) * step / self.warm
        if self.total is None:
            return 1.0
        done = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        return self.END + (1 - self.END) * 0.5 * (1 + math.cos(math.pi * done))

    def plan(self, total_steps: int) -> None:
        self.total = total_steps

    def step(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"warm": self.warm, "total": self.total, "last": self.scheduler.last_epoch}


@dataclass
class EpochPlan:
    """How many epochs a run plans. Sized by the budget (the ``onecycle`` schedule with a
    deadline), it is planned again after each epoch of the schedule's first third (its
    warm-up and peak: moving the cosine's end changes little there) from the median epoch so
    far (the first pays for warming up and is left out once there are others), so one epoch
    slowed by another process no longer shortens the whole run. To the nearest epoch: the
    last may end up to half an epoch past the deadline."""

    epochs: int
    cap: int
    deadline: float | None
    sized_by_budget: bool
    took: list[float] = field(default_factory=list)

    def timed(self, seconds: float) -> bool:
        """Record an epoch's time; True where the plan was made again."""
        self.took.append(seconds)
        done = len(self.took)
        if not self.sized_by_budget or done >= self.epochs:
            return False
        if done > 2 and done > self.epochs / 3:
            return False
        typical = statistics.median(self.took[1:] if done > 1 else self.took)
        left = (self.deadline or 0) - time.monotonic()
        self.epochs = max(2, min(self.cap, done + round(left / max(typical, 1e-3))))
        return True

    def out_of_time(self) -> bool:
        """Whether the next epoch would end past the deadline. A planned schedule runs to its
        end (cut short it would skip its lowest rates) unless the deadline has passed."""
        if self.deadline is None:
            return False
        last = self.took[-1]
        slack = last if self.sized_by_budget else 0.0
        return time.monotonic() + last > self.deadline + slack


def one_cycle_for(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    steps_per_epoch: int | None,
    deadline: float | None,
) -> OneCycle | None:
    if cfg.schedule != "onecycle":
        return None
    per_epoch = steps_per_epoch or 1
    return OneCycle(optimizer, per_epoch, None if deadline else per_epoch * cfg.epochs)
