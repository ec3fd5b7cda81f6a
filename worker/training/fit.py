"""The ways a run fits its model, on one typed set of ctx:

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
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from worker.training.batches import Batch, DecodedCache, Normalizer
from worker.training.context import RunContext
from worker.training.features import FeatureSet, extract, get_head, headless
from worker.training.loop import EvalResult, FitResult, evaluate, fit
from worker.training.recipe import ema_decay_for


@dataclass
class Fitted:
    result: FitResult
    final: EvalResult  # the kept weights on the validation images
    seconds: dict[str, float] = field(default_factory=dict)  # 'features', 'training'
    notes: list[str] = field(default_factory=list)  # what the report should say of it


def fit_model(ctx: RunContext, cache: DecodedCache) -> Fitted:
    """Fit ``ctx.model`` on the training images in ``cache`` the way ``ctx.plan`` says."""
    if ctx.plan.mode == "frozen":
        return fit_frozen(ctx, cache)
    if ctx.plan.mode == "frozen+unfreeze":
        return fit_frozen_then_full(ctx, cache)
    return fit_full(ctx, cache)


def fit_full(ctx: RunContext, cache: DecodedCache, first_epoch: int = 1) -> Fitted:
    model, cfg, source = ctx.model, ctx.config, ctx.source
    steps = cache.steps_per_epoch(cfg.batch_size)
    if cfg.ema_decay is not None:
        cfg = dataclasses.replace(cfg, ema_decay=ema_decay_for(steps))
    model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(True)
    normalize = Normalizer(source.prep, ctx.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    ctx.on_phase("training", epochs=first_epoch + cfg.epochs - 1)
    t0 = time.perf_counter()
    result = fit(
        model,
        cfg,
        train_batches=lambda _epoch: cache.batches(cfg.batch_size, generator, drop_single=True),
        val_batches=lambda: ctx.eval_set,
        prepare_train=normalize,
        prepare_val=normalize,
        device=ctx.device,
        autocast=ctx.autocast,
        on_epoch=ctx.on_epoch,
        deadline=ctx.deadline,
        first_epoch=first_epoch,
        before_epoch=lambda: ctx.threads.choose().threads,
        steps_per_epoch=steps,
    )
    seconds = {"training": time.perf_counter() - t0}
    final = evaluate(
        model,
        torch.nn.CrossEntropyLoss(),
        ctx.eval_set,
        normalize,
        ctx.device,
        ctx.autocast,
        keep_logits=True,
    )
    return Fitted(result, final, seconds)


def _centre(cache: DecodedCache, batch_size: int, crop: int) -> Iterator[Batch]:
    """The cached squares, centre-cropped: exactly the evaluation preprocessing."""
    side = cache.images.shape[1]
    top = (side - crop) // 2
    for images, labels in cache.batches(batch_size, augment=False):
        yield images[:, :, top : top + crop, top : top + crop], labels


def fit_frozen(ctx: RunContext, cache: DecodedCache) -> Fitted:
    model, cfg, source, device = ctx.model, ctx.config, ctx.source, ctx.device
    normalize = Normalizer(source.prep, device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    passes = 1 + cfg.feature_passes
    ctx.threads.choose()  # once: a head's epochs take milliseconds
    ctx.on_phase("features", feature_passes=passes)
    t0 = time.perf_counter()
    with headless(model):
        val = FeatureSet(*extract(model, ctx.eval_set, normalize, ctx.autocast))
        clean = _centre(cache, cfg.batch_size, source.prep.crop)
        sets = [FeatureSet(*extract(model, clean, normalize, ctx.autocast))]
        for _ in range(cfg.feature_passes):
            batches = cache.batches(cfg.batch_size)
            sets.append(FeatureSet(*extract(model, batches, normalize, ctx.autocast)))
            ctx.check()
    seconds = {"features": time.perf_counter() - t0}
    head = get_head(model)
    for p in head.parameters():
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(cfg.seed)

    def to_device(features: torch.Tensor) -> torch.Tensor:
        return features.to(device, non_blocking=True)

    ctx.on_phase("training", epochs=cfg.epochs)
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
        on_epoch=ctx.on_epoch,
        deadline=ctx.deadline,
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


def fit_frozen_then_full(ctx: RunContext, cache: DecodedCache) -> Fitted:
    """The head first; then every layer, when the budget leaves time for at least an epoch
    (estimated as three backbone passes: forward and backward), and only if it does better."""
    head_only = fit_frozen(ctx, cache)
    if ctx.deadline is None:
        head_only.notes.append("every layer: not trained (no TRAIN_BUDGET_S)")
        return head_only
    images = len(cache) + len(ctx.eval_set.samples)
    per_image = head_only.seconds["features"] / max(1, images * (1 + ctx.config.feature_passes))
    epoch_estimate = 3 * per_image * len(cache)
    left = ctx.deadline - time.monotonic()
    if left < epoch_estimate:
        head_only.notes.append(
            f"every layer: not trained ({left:.0f}s of the budget left, an epoch needs "
            f"≈{epoch_estimate:.0f}s)"
        )
        return head_only
    kept = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    config = dataclasses.replace(ctx.config, lr=ctx.config.lr / 10, schedule="onecycle")
    first = len(head_only.result.history) + 1
    whole = fit_full(dataclasses.replace(ctx, config=config), cache, first_epoch=first)
    whole.result.history = head_only.result.history + whole.result.history
    whole.seconds = {
        "features": head_only.seconds["features"],
        "training": head_only.seconds["training"] + whole.seconds["training"],
    }
    if whole.final.accuracy < head_only.final.accuracy:
        ctx.model.load_state_dict(kept)
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
