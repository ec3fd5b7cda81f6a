"""How a run trains, decided from the hardware, the start model and the data, with the reason
in words for the report:

- ``TRAIN_MODE=auto``: on a GPU, every layer trains (``full``). On a CPU from pretrained
  weights (ImageNet, a weights file, or a version this project trained), the head trains on
  cached backbone features first (``frozen``), then, when ``TRAIN_BUDGET_S`` leaves time, the
  whole network (``frozen+unfreeze``). On a CPU from random weights nothing is worth
  freezing: ``full``, at the data's own resolution (below).
- **The input size follows the data when training from scratch**: a multiple of 32 near the
  labeled images' typical shorter side, within 32-224, so icons, scans and sensor crops are
  not upscaled to 224 (a 64 px image at 224 costs 12x the compute and learns nothing more).
  It goes into the model's preprocessing, which travels with each version, so the workers
  serve at it. Pretrained weights keep their own input size.
- **The stem follows the input size when training from scratch**: under
  :data:`SMALL_STEM_BELOW` px a ResNet gets a 3x3 stride-1 first convolution and no max-pool
  (the CIFAR recipe), so a 32 px image is still 32x32 after the stem instead of 8x8, and 4x4
  before the head instead of 1x1. The stem is recorded in the version's checkpoint, so
  loading, ONNX export, int8 and the workers build the same network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.modelzoo import IMAGENET_STEM, SMALL_STEM, has_resnet_stem
from worker.preprocess import Preprocessing

MIN_SIDE, MAX_SIDE, STEP = 32, 224, 32
SMALL_STEM_BELOW = 64  # px of input side


@dataclass(frozen=True)
class TrainPlan:
    mode: str  # 'full' | 'frozen' | 'frozen+unfreeze'
    reason: str
    preprocessing: Preprocessing
    size_reason: str
    stem: str = IMAGENET_STEM
    stem_reason: str = "the start model's own"
    from_scratch: bool = False  # random weights: the from-scratch recipe (see schedule.py)


def choose_stem(
    model: torch.nn.Module, side: int, pretrained: bool, current: str
) -> tuple[str, str]:
    """The stem a run trains with, and why."""
    if pretrained:
        return current, f"{current}: the start model's own (its weights were learned with it)"
    if side >= SMALL_STEM_BELOW:
        return (
            IMAGENET_STEM,
            f"imagenet: {side} px inputs are not small (under {SMALL_STEM_BELOW} px)",
        )
    if not has_resnet_stem(model):
        return IMAGENET_STEM, f"imagenet: {type(model).__name__} has no ResNet stem to adapt"
    return SMALL_STEM, (
        f"small (3x3 stride 1, no max-pool): {side} px inputs would be "
        f"{max(1, side // 32)}x{max(1, side // 32)} before the head with ImageNet's stem"
    )


def input_side(typical_shorter_side: int) -> int:
    """A multiple of 32 near ``typical_shorter_side``, within 32-224."""
    side = STEP * round(typical_shorter_side / STEP) if typical_shorter_side else MAX_SIDE
    return max(MIN_SIDE, min(MAX_SIDE, side))


def plan(
    requested: str,
    device: torch.device,
    pretrained: bool,
    start_preprocessing: Preprocessing,
    typical_shorter_side: int,
    budget_s: float | None,
    model: torch.nn.Module | None = None,
    current_stem: str = IMAGENET_STEM,
) -> TrainPlan:
    """``requested``: the TRAIN_MODE setting. ``pretrained``: the start model's weights were
    learned (not random). ``model``: the start model (its stem may be adapted)."""
    if requested != "auto":
        mode, reason = requested, f"TRAIN_MODE={requested}"
    elif device.type != "cpu":
        mode, reason = "full", f"auto: a {device.type.upper()} trains every layer cheaply"
    elif not pretrained:
        mode, reason = "full", "auto: random weights on a CPU: nothing is worth freezing"
    elif budget_s:
        mode = "frozen+unfreeze"
        reason = (
            "auto: a CPU and pretrained weights: the head on cached features, then every "
            "layer while TRAIN_BUDGET_S lasts"
        )
    else:
        mode = "frozen"
        reason = (
            "auto: a CPU and pretrained weights: the head on cached features (set "
            "TRAIN_BUDGET_S to let every layer train after it)"
        )
    if pretrained:
        side = start_preprocessing.crop
        return TrainPlan(
            mode,
            reason,
            start_preprocessing,
            f"{side} px, the pretrained weights' own size",
            current_stem,
            f"{current_stem}: the start model's own (its weights were learned with it)",
        )
    side = input_side(typical_shorter_side)
    prep = Preprocessing(
        resize=side, crop=side, mean=start_preprocessing.mean, std=start_preprocessing.std
    )
    stem, stem_reason = (
        choose_stem(model, side, pretrained, current_stem)
        if model is not None
        else (current_stem, "the start model's own")
    )
    return TrainPlan(
        mode,
        reason,
        prep,
        f"{side} px, from the labeled images' typical shorter side ({typical_shorter_side} px)",
        stem,
        stem_reason,
        from_scratch=True,
    )
