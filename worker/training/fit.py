"""The ways a run fits its model, on one typed set of inputs:

- ``full``: every layer trains, on augmented images;
- ``frozen``: the backbone runs once over the images (plus ``feature_passes`` augmented
  passes), the pooled features are cached, and only the head trains on them;
- ``frozen+unfreeze``: ``frozen`` first, then, while the time budget lasts, every layer at a
  tenth of the learning rate; the better of the two is kept.

Training images come decoded once per run (:class:`~worker.training.batches.DecodedCache`).
Each way ends with the best epoch's weights in the model and a final evaluation of them,
logits included (the calibration is fitted on them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from contract.reports import EpochRecord
from worker.training.batches import Batch, DecodedCache, EvalSet, ImageSource, Normalizer
from worker.training.dataset import LabeledSet
from worker.training.features import FeatureSet, extract, get_head, headless
from worker.training.loop import EvalResult, FitResult, TrainConfig, evaluate, fit


@dataclass
class FitInputs:
    model: torch.nn.Module  # on ``device``
    labeled: LabeledSet
    source: ImageSource
    eval_set: EvalSet
    train_cache: DecodedCache
    device: torch.device
    autocast: torch.dtype | None
    config: TrainConfig
    on_phase: Callable[..., None]  # (phase, **values): progress
    on_epoch: Callable[[EpochRecord], None]
    check: Callable[[], None]  # raises to stop the run (the training lock was lost)
    deadline: float | None = None  # time.monotonic() by which training must end


@dataclass
class Fitted:
    result: FitResult
    final: EvalResult  # the kept weights on the validation images
    seconds: dict[str, float] = field(default_factory=dict)  # 'features', 'training'
    notes: list[str] = field(default_factory=list)  # what the report should say of it


def fit_model(inputs: FitInputs, mode: str) -> Fitted:
    if mode == "frozen":
        return fit_frozen(inputs)
    if mode == "frozen+unfreeze":
        return fit_frozen_then_full(inputs)
    return fit_full(inputs)


def fit_full(inputs: FitInputs, first_epoch: int = 1) -> Fitted:
    model, cfg, source = inputs.model, inputs.config, inputs.source
    model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(True)
    normalize = Normalizer(source.prep, inputs.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs.on_phase("training", epochs=first_epoch + cfg.epochs - 1)
    t0 = time.perf_counter()
    result = fit(
        model,
        cfg,
        train_batches=lambda _epoch: inputs.train_cache.batches(
            cfg.batch_size, generator, drop_single=True
        ),
        val_batches=lambda: inputs.eval_set,
        prepare_train=normalize,
        prepare_val=normalize,
        device=inputs.device,
        autocast=inputs.autocast,
        on_epoch=inputs.on_epoch,
        deadline=inputs.deadline,
        first_epoch=first_epoch,
    )
    seconds = {"training": time.perf_counter() - t0}
    final = evaluate(
        model,
        torch.nn.CrossEntropyLoss(),
        inputs.eval_set,
        normalize,
        inputs.device,
        inputs.autocast,
        keep_logits=True,
    )
    return Fitted(result, final, seconds)


def _centre(cache: DecodedCache, batch_size: int, crop: int) -> Iterator[Batch]:
    """The cached squares, centre-cropped: exactly the evaluation preprocessing."""
    side = cache.images.shape[1]
    top = (side - crop) // 2
    for images, labels in cache.batches(batch_size, augment=False):
        yield images[:, :, top : top + crop, top : top + crop], labels


def fit_frozen(inputs: FitInputs) -> Fitted:
    model, cfg, source, device = inputs.model, inputs.config, inputs.source, inputs.device
    normalize = Normalizer(source.prep, device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    passes = 1 + cfg.feature_passes
    inputs.on_phase("features", feature_passes=passes)
    t0 = time.perf_counter()
    cache = inputs.train_cache
    with headless(model):
        val = FeatureSet(*extract(model, inputs.eval_set, normalize, inputs.autocast))
        clean = _centre(cache, cfg.batch_size, source.prep.crop)
        sets = [FeatureSet(*extract(model, clean, normalize, inputs.autocast))]
        for _ in range(cfg.feature_passes):
            batches = cache.batches(cfg.batch_size)
            sets.append(FeatureSet(*extract(model, batches, normalize, inputs.autocast)))
            inputs.check()
    seconds = {"features": time.perf_counter() - t0}
    head = get_head(model)
    for p in head.parameters():
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(cfg.seed)

    def to_device(features: torch.Tensor) -> torch.Tensor:
        return features.to(device, non_blocking=True)

    inputs.on_phase("training", epochs=cfg.epochs)
    t1 = time.perf_counter()
    result = fit(
        head,
        cfg,
        train_batches=lambda epoch: sets[(epoch - 1) % len(sets)].batches(
            cfg.batch_size, generator
        ),
        val_batches=lambda: val.batches(cfg.batch_size),
        prepare_train=to_device,
        prepare_val=to_device,
        device=device,
        autocast=None,  # a Linear on cached features: fp32 costs nothing
        on_epoch=inputs.on_epoch,
        deadline=inputs.deadline,
    )
    seconds["training"] = time.perf_counter() - t1
    model.requires_grad_(True)
    final = evaluate(
        head,
        torch.nn.CrossEntropyLoss(),
        val.batches(cfg.batch_size),
        to_device,
        device,
        keep_logits=True,
    )
    return Fitted(result, final, seconds)


def fit_frozen_then_full(inputs: FitInputs) -> Fitted:
    """The head first; then every layer, when the budget leaves time for at least an epoch
    (estimated as three backbone passes: forward and backward), and only if it does better."""
    head_only = fit_frozen(inputs)
    if inputs.deadline is None:
        head_only.notes.append("every layer: not trained (no TRAIN_BUDGET_S)")
        return head_only
    images = len(inputs.train_cache) + len(inputs.eval_set.samples)
    per_image = head_only.seconds["features"] / max(1, images * (1 + inputs.config.feature_passes))
    epoch_estimate = 3 * per_image * len(inputs.train_cache)
    left = inputs.deadline - time.monotonic()
    if left < epoch_estimate:
        head_only.notes.append(
            f"every layer: not trained ({left:.0f}s of the budget left, an epoch needs "
            f"≈{epoch_estimate:.0f}s)"
        )
        return head_only
    kept = {k: v.detach().clone() for k, v in inputs.model.state_dict().items()}
    config = dataclasses.replace(inputs.config, lr=inputs.config.lr / 10)
    first = len(head_only.result.history) + 1
    whole = fit_full(dataclasses.replace(inputs, config=config), first_epoch=first)
    whole.result.history = head_only.result.history + whole.result.history
    whole.seconds = {
        "features": head_only.seconds["features"],
        "training": head_only.seconds["training"] + whole.seconds["training"],
    }
    if whole.final.accuracy < head_only.final.accuracy:
        inputs.model.load_state_dict(kept)
        head_only.result.history = whole.result.history
        head_only.seconds = whole.seconds
        head_only.notes.append(
            f"every layer: trained {len(whole.result.history) - first + 1} epoch(s) at "
            f"lr {config.lr:g}, worse on validation ({whole.final.accuracy:.3f} < "
            f"{head_only.final.accuracy:.3f}): the head-only weights are kept"
        )
        return head_only
    whole.result.stopped_by_budget |= head_only.result.stopped_by_budget
    whole.notes.append(f"every layer: trained after the head, at lr {config.lr:g}")
    return whole
