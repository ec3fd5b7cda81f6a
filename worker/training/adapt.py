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
from worker.modelzoo import SMALL_STEM, SMALL_STEM_STRIDE2, LoadedModel, use_small_stem
from worker.training.augment import decide_flip, training_transform
from worker.training.batches import DecodedCache, Normalizer
from worker.training.context import RunContext
from worker.training.loop import EpochStats, make_optimizer, train_one_epoch

MIN_EPOCHS = 12
PROBE_STEPS = 3  # timed, after one untimed step (allocations, kernel choice)
EVAL_SHARE = 0.35  # a forward pass without gradients costs about a third of a training step


def adapt_to_data(ctx: RunContext, cache: DecodedCache) -> None:
    choose_augmentation(ctx, cache)
    fit_stem_to_budget(ctx, cache)


def choose_augmentation(ctx: RunContext, cache: DecodedCache) -> None:
    """Mirror the training images or not, as the data says (TRAIN_FLIP=auto)."""
    images, labels = cache.sample_for_checks()
    flip = decide_flip(ctx.settings.train_flip, images, labels, len(ctx.classes))
    transform, described = training_transform(ctx.source.prep.crop, flip.flip)
    cache.use_augmentation(transform, described)
    ctx.augmentation = AugmentationReport(crops=described, mirrored=flip.flip, why=flip.reason)


def fit_stem_to_budget(ctx: RunContext, cache: DecodedCache) -> None:
    """Keep the stride-1 small stem if the budget holds :data:`MIN_EPOCHS` epochs of it (or
    all the epochs the run may take, if fewer); otherwise switch to stride 2. Says why in
    ``ctx.stem_reason``."""
    if ctx.loaded.stem != SMALL_STEM or ctx.deadline is None or ctx.plan.mode != "full":
        return
    batch = ctx.config.batch_size
    step_s = _seconds_per_step(ctx, cache)
    train_steps = cache.steps_per_epoch(batch)
    val_steps = len(ctx.labeled.val) / batch
    epoch_s = step_s * (train_steps + EVAL_SHARE * val_steps)
    epochs = (ctx.deadline - time.monotonic()) / max(epoch_s, 1e-6)
    held = f"the budget holds about {epochs:.0f} epochs at stride 1 ({epoch_s:.1f} s each)"
    if epochs >= min(MIN_EPOCHS, ctx.config.epochs):  # TRAIN_EPOCHS may ask for fewer
        ctx.stem_reason = f"{ctx.stem_reason}; {held}"
        return
    set_stem(ctx.loaded, SMALL_STEM_STRIDE2, ctx.config.seed)
    ctx.stem_reason = (
        f"small, stride 2 (3x3, no max-pool): {held}, fewer than {MIN_EPOCHS}; stride 2 "
        "costs about a quarter of that"
    )


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
    """Give ``loaded``'s network the small-input ``stem``, its first convolution drawn from
    ``seed`` (the same network for the same run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        use_small_stem(loaded.model, stem)
    loaded.stem = stem
