"""What every step of a training run shares, built once the run knows its data and its start
model (:func:`worker.training.run.run_training` builds it in its ``prepare`` step): the data, the
model and how to train it, where and in which precision, the images decoded for validation, and
how to report progress. The steps take it instead of repeating the same dozen values each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from contract.labeled import LabeledSeen
from contract.messages import Trigger
from contract.reports import AugmentationReport, EpochRecord, LeakReport
from contract.settings import Settings
from worker.model.modelzoo import LoadedModel
from worker.training.batches import EvalSet, ImageSource
from worker.training.dataset import LabeledSet
from worker.training.loop import TrainConfig
from worker.training.plan import TrainPlan
from worker.training.start import ActiveInfo, Start
from worker.training.threads import ThreadChooser


@dataclass
class RunContext:
    settings: Settings
    run_id: int | None
    trigger: Trigger
    labeled: LabeledSet
    manifest_sha256: str
    active: ActiveInfo | None  # the model the candidate must beat
    start: Start  # the model it starts from, its head already sized for the labeled classes
    head_rows_kept: int
    plan: TrainPlan
    device: torch.device
    autocast: torch.dtype | None
    config: TrainConfig
    threads: ThreadChooser  # the trainer's threads, chosen before each epoch
    source: ImageSource  # decodes labeled images as this model's preprocessing does
    eval_set: EvalSet  # the validation images, decoded once
    holdout_set: EvalSet  # the held-out images, decoded once
    on_phase: Callable[..., None]  # (phase, **values): progress
    on_epoch: Callable[[EpochRecord], None]
    check: Callable[[], None]  # raises to stop the run (lock lost, cancel asked)
    deadline: float | None = None  # time.monotonic() by which training must end
    durations: dict[str, float] = field(default_factory=dict)  # seconds per phase
    augmentation: AugmentationReport | dict[str, Any] = field(default_factory=dict)  # report
    stem_reason: str = ""  # why the network has the stem it has (the plan's, or the probe's)
    precision_reason: str = ""  # why it trains in the precision it does (measured on a CPU)
    leaks: LeakReport | None = None  # held-out images left out of the gate (near-twins)
    suspects: list[LabeledSeen] = field(default_factory=list)  # every labeled image, scored

    @property
    def loaded(self) -> LoadedModel:
        return self.start.loaded

    @property
    def model(self) -> torch.nn.Module:
        return self.start.loaded.model

    @property
    def classes(self) -> list[str]:
        return self.labeled.classes
