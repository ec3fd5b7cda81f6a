"""The two ways a run fits its model, on one typed set of inputs:

- ``full``: every layer trains, on augmented images decoded each epoch;
- ``frozen``: the backbone runs once over the images (plus ``feature_passes`` augmented
  passes), the pooled features are cached, and only the head trains on them.

Both end with the best epoch's weights in the model and a final evaluation of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from contract.reports import EpochRecord
from worker.training.batches import EvalSet, ImageSource, Normalizer
from worker.training.dataset import LabeledSet
from worker.training.features import FeatureSet, extract, get_head, headless
from worker.training.loop import EvalResult, FitResult, TrainConfig, evaluate, fit


@dataclass
class FitInputs:
    model: torch.nn.Module  # on ``device``
    labeled: LabeledSet
    source: ImageSource
    eval_set: EvalSet
    device: torch.device
    autocast: torch.dtype | None
    config: TrainConfig
    on_phase: Callable[..., None]  # (phase, **values): progress
    on_epoch: Callable[[EpochRecord], None]
    check: Callable[[], None]  # raises to stop the run (the training lock was lost)


@dataclass
class Fitted:
    result: FitResult
    final: EvalResult  # the kept weights on the validation images
    seconds: dict[str, float] = field(default_factory=dict)  # 'features', 'training'


def fit_model(inputs: FitInputs) -> Fitted:
    return fit_frozen(inputs) if inputs.config.mode == "frozen" else fit_full(inputs)


def fit_full(inputs: FitInputs) -> Fitted:
    model, cfg, source = inputs.model, inputs.config, inputs.source
    model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(True)
    normalize = Normalizer(source.prep, inputs.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs.on_phase("training", epochs=cfg.epochs)
    t0 = time.perf_counter()
    result = fit(
        model,
        cfg,
        train_batches=lambda _epoch: source.batches(
            inputs.labeled.train, cfg.batch_size, source.train_image, generator, drop_single=True
        ),
        val_batches=lambda: inputs.eval_set,
        prepare_train=normalize,
        prepare_val=normalize,
        device=inputs.device,
        autocast=inputs.autocast,
        on_epoch=inputs.on_epoch,
    )
    seconds = {"training": time.perf_counter() - t0}
    final = evaluate(
        model,
        torch.nn.CrossEntropyLoss(),
        inputs.eval_set,
        normalize,
        inputs.device,
        inputs.autocast,
    )
    return Fitted(result, final, seconds)


def fit_frozen(inputs: FitInputs) -> Fitted:
    model, cfg, source, device = inputs.model, inputs.config, inputs.source, inputs.device
    normalize = Normalizer(source.prep, device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    passes = 1 + cfg.feature_passes
    inputs.on_phase("features", feature_passes=passes)
    t0 = time.perf_counter()
    train = inputs.labeled.train
    with headless(model):
        val = FeatureSet(*extract(model, inputs.eval_set, normalize, inputs.autocast))
        sets = [
            FeatureSet(
                *extract(
                    model,
                    source.batches(train, cfg.batch_size, source.eval_image),
                    normalize,
                    inputs.autocast,
                )
            )
        ]
        for _ in range(cfg.feature_passes):
            batches = source.batches(train, cfg.batch_size, source.train_image)
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
    )
    seconds["training"] = time.perf_counter() - t1
    model.requires_grad_(True)
    final = evaluate(
        head, torch.nn.CrossEntropyLoss(), val.batches(cfg.batch_size), to_device, device
    )
    return Fitted(result, final, seconds)
