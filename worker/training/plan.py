"""How a run trains, decided from the hardware, the start model and the data, with the reason
in words for the report:

- ``TRAIN_MODE=auto``: on a GPU, every layer trains (``full``). On a CPU from pretrained
  weights (ImageNet, a weights file, or a version this project trained), the head trains on
  cached backbone features first (``frozen``), then, when ``TRAIN_BUDGET_S`` leaves time, the
  whole network (``frozen+unfreeze``). On a CPU from random weights nothing is worth
  freezing: ``full``, at the data's own resolution (below).
- **The input size follows the content when training from scratch**: a multiple of 32 near
  the side at which the labeled images keep their detail (:mod:`worker.training.detail`),
  within 32-224, whatever size they are stored at: 28 px drawings saved as 64 px PNGs train at
  32 px, like the same drawings saved at 28 px. It goes into the model's preprocessing, which
  travels with each version, so the workers serve at it. Pretrained weights keep their own.
- **The stem follows the input size when training from scratch**, by one rule with no
  threshold of its own: the cheapest ResNet stem whose last feature map is still at least
  :data:`FINAL_MAP` px a side (total strides 32, 16 and 8 for the ImageNet stem, a 3x3
  stride-2 and a 3x3 stride-1 stem without max-pool): stride 1 under 64 px, stride 2 under
  128 px, ImageNet's from 128 px. Where the budget holds too few epochs of it, the next
  cheaper one (:mod:`worker.training.adapt`). The stem is recorded in the version's
  checkpoint, so loading, ONNX export, int8 and the workers build the same network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.model.modelzoo import IMAGENET_STEM, SMALL_STEM, SMALL_STEM_STRIDE2, has_resnet_stem
from worker.model.preprocess import Preprocessing
from worker.training.detail import ContentSize

MIN_SIDE, MAX_SIDE, STEP = 32, 224, 32
#: The side, in px, of the last feature map a stem must leave for the head to pool over.
FINAL_MAP = 4
#: Stems from the finest (most compute) to the cheapest, with the network's total stride.
STEMS = ((SMALL_STEM, 8), (SMALL_STEM_STRIDE2, 16), (IMAGENET_STEM, 32))
STEM_WORDS = {
    SMALL_STEM: "3x3 stride 1, no max-pool",
    SMALL_STEM_STRIDE2: "3x3 stride 2, no max-pool",
    IMAGENET_STEM: "7x7 stride 2 and a max-pool",
}


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
    if not has_resnet_stem(model):
        return IMAGENET_STEM, f"imagenet: {type(model).__name__} has no ResNet stem to adapt"
    fitting = [(stem, stride) for stem, stride in STEMS if side // stride >= FINAL_MAP]
    stem, stride = fitting[-1] if fitting else STEMS[0]  # the cheapest that fits
    final = max(1, side // stride)
    return stem, (
        f"{stem} ({STEM_WORDS[stem]}): the cheapest stem that leaves {side} px inputs a "
        f"{final}x{final} map before the head (at least {FINAL_MAP}x{FINAL_MAP})"
    )


def input_side(content_side: int) -> int:
    """A multiple of 32 near ``content_side``, within 32-224."""
    side = STEP * round(content_side / STEP) if content_side else MAX_SIDE
    return max(MIN_SIDE, min(MAX_SIDE, side))


def plan(
    requested: str,
    device: torch.device,
    pretrained: bool,
    start_preprocessing: Preprocessing,
    content: ContentSize | None,
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
    side = input_side(content.side if content is not None else 0)
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
        f"{side} px: {content.reason}" if content is not None else f"{side} px (no content seen)",
        stem,
        stem_reason,
        from_scratch=True,
    )
