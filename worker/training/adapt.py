"""What a run adapts to its data once the training images are decoded, before it trains:
whether to mirror them (:func:`worker.training.augment.decide_flip`), and the small-input
stem's stride, fitted to what the time budget holds.

The 3x3 stride-1 stem (the CIFAR recipe) keeps a 32 px image 32x32 through the first blocks,
which is what gets a ResNet-18 from the mid-70s to the high-80s on 28 px images, but it costs
about four times the compute of the ImageNet stem. Where the budget holds enough epochs of it
that is the better network; where it does not, a network trained for a handful of epochs loses
more than the stride costs. So before training, a few steps of the stride-1 network on real
training batches are timed, and where the rest of the budget holds fewer than
:data:`MIN_EPOCHS` of its epochs, the stem's stride becomes 2 (16x16 after the stem, a
quarter of the compute). Measured on Fashion-MNIST (docs/performance.md): 14 epochs of the
stride-1 network gave 0.86 on unseen images, 6 epochs gave 0.81, and about 30 epochs of the
stride-2 network 0.84.
"""

from __future__ import annotations

import copy
import itertools
import time

import torch

from contract.reports import AugmentationReport
from worker.model.modelzoo import (
    IMAGENET_STEM,
    LoadedModel,
    use_imagenet_stem,
    use_small_stem,
)
from worker.training.augment import decide_flip, training_transform
from worker.training.batches import DecodedCache, Normalizer
from worker.training.context import RunContext
from worker.training.loop import EpochStats, make_optimizer, train_one_epoch
from worker.training.plan import STEMS

MIN_EPOCHS = 12
#: The stems a run from scratch may step down, finest first (plan.STEMS), never to one that
#: leaves less than a MIN_FINAL_MAP x MIN_FINAL_MAP map before the head (it would learn
#: little however many epochs it had).
LADDER = tuple(stem for stem, _ in STEMS)
STRIDES = dict(STEMS)
MIN_FINAL_MAP = 2
PROBE_STEPS = 3  # timed, after one untimed step (allocations, kernel choice)
EVAL_SHARE = 0.35  # a forward pass without gradients costs about a third of a training step


def adapt_to_data(ctx: RunContext, cache: DecodedCache) -> None:
    choose_augmentation(ctx, cache)
    choose_precision(ctx, cache)
    fit_stem_to_budget(ctx, cache)


#: bf16 must train this much faster than fp32 to be chosen.
BF16_MARGIN = 1.10


def choose_precision(ctx: RunContext, cache: DecodedCache) -> None:
    """On a CPU that offers bf16 (PRECISION=auto), train in it only where a few real steps ran
    faster than in fp32: an AVX512-BF16 CPU without AMX trains no faster in bf16."""
    if ctx.device.type != "cpu" or ctx.autocast != torch.bfloat16:
        return
    if ctx.settings.precision != "auto":
        ctx.precision_reason = f"bf16: PRECISION={ctx.settings.precision}"
        return
    bf16 = _seconds_per_step(ctx, cache)
    ctx.autocast = None
    fp32 = _seconds_per_step(ctx, cache)
    batch = ctx.config.batch_size
    figures = f"fp32 {batch / fp32:.0f} img/s, bf16 {batch / bf16:.0f} img/s in training steps"
    if fp32 > bf16 * BF16_MARGIN:
        ctx.autocast = torch.bfloat16
        ctx.precision_reason = f"bf16: measured {figures}"
    else:
        ctx.precision_reason = f"fp32: measured {figures} (bf16 wins by less than 10 %)"


def choose_augmentation(ctx: RunContext, cache: DecodedCache) -> None:
    """Mirror the training images or not, as the data says (TRAIN_FLIP=auto)."""
    images, labels = cache.sample_for_checks()
    flip = decide_flip(ctx.settings.train_flip, images, labels, len(ctx.classes))
    transform, described = training_transform(ctx.source.prep.crop, flip.flip)
    cache.use_augmentation(transform, described)
    ctx.augmentation = AugmentationReport(crops=described, mirrored=flip.flip, why=flip.reason)


def fit_stem_to_budget(ctx: RunContext, cache: DecodedCache) -> None:
    """Keep the planned stem if the budget holds :data:`MIN_EPOCHS` epochs of it (or all the
    epochs the run may take, if fewer); otherwise the next cheaper one (plan.STEMS: stride 1,
    stride 2, ImageNet's), timed again. Says why in ``ctx.stem_reason``."""
    if ctx.loaded.stem not in LADDER or ctx.deadline is None or ctx.plan.mode != "full":
        return
    batch = ctx.config.batch_size
    train_steps = cache.steps_per_epoch(batch)
    val_steps = len(ctx.labeled.val) / batch
    notes: list[str] = []
    while True:
        step_s = _seconds_per_step(ctx, cache)
        epoch_s = step_s * (train_steps + EVAL_SHARE * val_steps)
        epochs = (ctx.deadline - time.monotonic()) / max(epoch_s, 1e-6)
        held = (
            f"the budget holds about {epochs:.0f} epochs of {ctx.loaded.stem} "
            f"({epoch_s:.1f} s each)"
        )
        cheaper = LADDER.index(ctx.loaded.stem) + 1
        side = ctx.source.prep.crop
        coarsest = cheaper >= len(LADDER) or side // STRIDES[LADDER[cheaper]] < MIN_FINAL_MAP
        if epochs >= min(MIN_EPOCHS, ctx.config.epochs) or coarsest:
            ctx.stem_reason = "; ".join([ctx.stem_reason, *notes, held])
            return
        notes.append(f"{held}, fewer than {MIN_EPOCHS}: the next cheaper stem")
        set_stem(ctx.loaded, LADDER[cheaper], ctx.config.seed)


def _seconds_per_step(ctx: RunContext, cache: DecodedCache) -> float:
    """Training steps of a copy of the model on real batches, timed by the training loop's own
    :func:`train_one_epoch`; the model itself and the run's random state are left as they
    were."""
    model = copy.deepcopy(ctx.model).to(ctx.device).to(memory_format=torch.channels_last)
    optimizer, _ = make_optimizer(list(model.parameters()), ctx.config)
    normalize = Normalizer(ctx.source.prep, ctx.device)
    generator = torch.Generator().manual_seed(ctx.config.seed)
    batches = cache.batches(ctx.config.batch_size, generator, drop_single=True)

    def steps(count: int) -> EpochStats:
        return train_one_epoch(
            model,
            torch.nn.CrossEntropyLoss(),
            optimizer,
            itertools.islice(batches, count),
            normalize,
            ctx.device,
            ctx.autocast,
        )

    with torch.random.fork_rng(devices=[]):
        warm = steps(1)
        timed = steps(PROBE_STEPS)
    measured = timed if timed.steps else warm
    return measured.seconds / max(1, measured.steps)


def set_stem(loaded: LoadedModel, stem: str, seed: int) -> None:
    """Give ``loaded``'s network ``stem``, its first convolution drawn from ``seed`` (the same
    network for the same run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if stem == IMAGENET_STEM:
            use_imagenet_stem(loaded.model)
        else:
            use_small_stem(loaded.model, stem)
    loaded.stem = stem
