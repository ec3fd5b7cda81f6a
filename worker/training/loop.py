"""The training loop, after torchvision's references/classification: ``train_one_epoch``,
``evaluate``, and a best-epoch checkpoint dict (model / lr_scheduler / epoch) kept for early
stopping. The same loop trains a whole network (mode 'full') or only the head on cached
backbone features (mode 'frozen'): ``prepare`` turns a batch into the module's input.

Two schedules: ``step`` (StepLR, the transfer-learning default) and ``onecycle``, sized to the
time budget: the first epoch warms the learning rate up and is timed, then the run plans as
many epochs as the rest of the budget holds and anneals the rate to zero over them (cosine),
so the last epoch ends near the budget with the rate low, where a fixed epoch count would
either stop short or stop mid-schedule. With ``ema_decay``, an exponential moving average of
the weights (and BatchNorm statistics) is what gets evaluated and kept. Early stopping never
ends a run in the first third of its planned epochs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from contract.reports import EpochRecord
from contract.settings import Settings
from worker.training.schedule import EpochPlan, one_cycle_for

Prepare = Callable[[torch.Tensor], torch.Tensor]
BatchIterable = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "full"  # 'full' | 'frozen'
    optimizer: str = "sgd"  # 'sgd' (+ StepLR) | 'adamw' (+ StepLR)
    lr: float = 1e-3
    momentum: float = 0.9
    step_size: int = 7
    gamma: float = 0.1
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    patience: int = 3
    seed: int = 0
    # Frozen mode: augmented feature passes over the training images besides the clean one;
    # epoch e trains on pass e % (1 + feature_passes).
    feature_passes: int = 0
    schedule: str = "step"  # 'step' (StepLR) | 'onecycle' (warm-up, then cosine to the budget)
    label_smoothing: float = 0.0
    ema_decay: float | None = None  # per step; None: no weight averaging

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "mode": settings.train_mode,
            "optimizer": settings.train_optimizer,
            "lr": settings.train_lr,
            "momentum": settings.train_momentum,
            "step_size": settings.train_step_size,
            "gamma": settings.train_gamma,
            "weight_decay": 0.01 if settings.train_optimizer == "adamw" else 0.0,
            "epochs": settings.train_epochs,
            "batch_size": settings.train_batch_size,
            "patience": settings.train_patience,
        }
        values.update(overrides)
        return cls(**values)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_optimizer(
    params: Iterable[nn.Parameter], cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return optimizer, scheduler


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    steps: int = 0


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    targets: list[int]
    preds: list[int]
    seconds: float
    logits: torch.Tensor | None = field(default=None, repr=False)  # [N, C] fp32, on the CPU

    def per_class(self, num_classes: int) -> list[float | None]:
        hits = [0] * num_classes
        totals = [0] * num_classes
        for t, p in zip(self.targets, self.preds, strict=True):
            totals[t] += 1
            hits[t] += int(t == p)
        return [h / n if n else None for h, n in zip(hits, totals, strict=True)]

    def confusion(self, num_classes: int) -> list[list[int]]:
        """rows: true class, columns: predicted class."""
        matrix = [[0] * num_classes for _ in range(num_classes)]
        for t, p in zip(self.targets, self.preds, strict=True):
            matrix[t][p] += 1
        return matrix


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: BatchIterable,
    prepare: Prepare,
    device: torch.device,
    autocast: torch.dtype | None = None,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    start = time.perf_counter()
    model.train()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for inputs, targets in batches:
        steps += 1
        x = prepare(inputs)
        y = targets.to(device, non_blocking=True)
        with autocast_context(device, autocast):
            output = model(x)
        loss = criterion(output.float(), y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training diverged (loss {loss.item()}): lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        n = y.shape[0]
        total_loss += loss.item() * n
        correct += int((output.argmax(dim=1) == y).sum().item())
        seen += n
    return EpochStats(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        images=seen,
        seconds=time.perf_counter() - start,
        steps=steps,
    )


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    batches: BatchIterable,
    prepare: Prepare,
    device: torch.device,
    autocast: torch.dtype | None = None,
    keep_logits: bool = False,
) -> EvalResult:
    """Loss, accuracy and predictions on ``batches``; with ``keep_logits``, the logits too
    (the calibration is fitted on them)."""
    start = time.perf_counter()
    model.eval()
    total_loss = 0.0
    targets: list[int] = []
    preds: list[int] = []
    logits: list[torch.Tensor] = []
    with torch.inference_mode():
        for inputs, labels in batches:
            x = prepare(inputs)
            y = labels.to(device, non_blocking=True)
            with autocast_context(device, autocast):
                output = model(x)
            output = output.float()
            total_loss += criterion(output, y).item() * y.shape[0]
            targets += y.cpu().tolist()
            preds += output.argmax(dim=1).cpu().tolist()
            if keep_logits:
                logits.append(output.cpu())
    correct = sum(int(t == p) for t, p in zip(targets, preds, strict=True))
    return EvalResult(
        loss=total_loss / max(len(targets), 1),
        accuracy=correct / max(len(targets), 1),
        targets=targets,
        preds=preds,
        seconds=time.perf_counter() - start,
        logits=torch.cat(logits) if logits else None,
    )


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    # The references' checkpoint dict, for the best epoch (without the optimizer state: a run
    # is never resumed, and momentum buffers would double the memory it takes).
    best: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    stopped_by_budget: bool = False
    planned_epochs: int = 0
    since_best: int = 0  # epochs since the best one (what early stopping counts)

    @property
    def best_epoch(self) -> int:
        return int(self.best.get("epoch", 0))

    def offer(self, epoch: int, val: EvalResult, judged: nn.Module, scheduler: Any) -> None:
        """Keep this epoch's weights if they are the best so far: a higher validation
        accuracy, ties to the lower loss."""
        best = self.best
        if best and (val.accuracy, -val.loss) <= (best["val_acc"], -best["val_loss"]):
            self.since_best += 1
            return
        self.since_best = 0
        self.best = {
            "model": _snapshot(judged),
            "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "val_acc": val.accuracy,
            "val_loss": val.loss,
        }


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _weight_average(
    model: nn.Module, cfg: TrainConfig
) -> torch.optim.swa_utils.AveragedModel | None:
    if not cfg.ema_decay:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
        use_buffers=True,
    )


def _epoch_record(
    epoch: int,
    stats: EpochStats,
    val: EvalResult,
    optimizer: torch.optim.Optimizer,
    plan: EpochPlan,
    result: FitResult,
    threads: int | None,
) -> EpochRecord:
    record = EpochRecord(
        epoch=epoch,
        train_loss=stats.loss,
        train_acc=stats.accuracy,
        val_loss=val.loss,
        val_acc=val.accuracy,
        lr=optimizer.param_groups[0]["lr"],
        seconds=stats.seconds + val.seconds,
        planned_epochs=plan.epochs,
        best_epoch=result.best_epoch,
    )
    if threads is not None:
        record["threads"] = threads
    return record


def _stop_after(done: int, plan: EpochPlan, result: FitResult, patience: int) -> bool:
    """Whether the run ends after its ``done``-th epoch (and why, in ``result``)."""
    if done >= plan.epochs:
        return True
    # Early stopping waits out the first third of the plan: a schedule that is still
    # warming up or at its highest rate is no plateau.
    if result.since_best >= patience and done > plan.epochs / 3:
        result.stopped_early = True
        return True
    if plan.out_of_time():
        result.stopped_by_budget = True
        return True
    return False


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    train_batches: Callable[[int], BatchIterable],
    val_batches: Callable[[], BatchIterable],
    prepare_train: Prepare,
    prepare_val: Prepare,
    device: torch.device,
    autocast: torch.dtype | None = None,
    params: Iterable[nn.Parameter] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    deadline: float | None = None,
    first_epoch: int = 1,
    before_epoch: Callable[[], int] | None = None,
    steps_per_epoch: int | None = None,
) -> FitResult:
    """Train ``model`` for up to ``cfg.epochs`` (with the ``onecycle`` schedule and a
    ``deadline``, as many as fit before it), stop after ``cfg.patience`` epochs without a
    better validation accuracy (ties go to the lower loss; never in the first third), or when
    another epoch would end after ``deadline`` (``time.monotonic()``), and load the best
    epoch's weights back into ``model``. Epochs are numbered from ``first_epoch``;
    ``before_epoch`` (the thread chooser) returns the threads each epoch runs on."""
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    trainable = list(params if params is not None else model.parameters())
    optimizer, step_lr = make_optimizer(trainable, cfg)
    one_cycle = one_cycle_for(optimizer, cfg, steps_per_epoch, deadline)
    ema = _weight_average(model, cfg)

    def after_step() -> None:
        if one_cycle is not None:
            one_cycle.step()
        if ema is not None:
            ema.update_parameters(model)

    judged: nn.Module = ema.module if ema is not None else model
    plan = EpochPlan(
        cfg.epochs, cfg.epochs, deadline, one_cycle is not None and one_cycle.total is None
    )
    result = FitResult()
    for epoch in range(first_epoch, first_epoch + cfg.epochs):
        epoch_started = time.monotonic()
        threads = before_epoch() if before_epoch is not None else None
        stats = train_one_epoch(
            model,
            criterion,
            optimizer,
            train_batches(epoch),
            prepare_train,
            device,
            autocast,
            after_step if (one_cycle is not None or ema is not None) else None,
        )
        val = evaluate(judged, criterion, val_batches(), prepare_val, device, autocast)
        if one_cycle is None:
            step_lr.step()
        if plan.timed(time.monotonic() - epoch_started) and one_cycle is not None:
            one_cycle.plan(plan.epochs * max(1, stats.steps))
            result.stopped_by_budget = plan.epochs < cfg.epochs  # the budget sized the run
        result.offer(epoch, val, judged, one_cycle if one_cycle is not None else step_lr)
        record = _epoch_record(epoch, stats, val, optimizer, plan, result, threads)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if _stop_after(epoch - first_epoch + 1, plan, result, cfg.patience):
            break
    result.planned_epochs = plan.epochs
    model.load_state_dict(result.best["model"])
    return result
