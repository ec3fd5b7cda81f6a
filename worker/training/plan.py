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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.preprocess import Preprocessing

MIN_SIDE, MAX_SIDE, STEP = 32, 224, 32


@dataclass(frozen=True)
class TrainPlan:
    mode: str  # 'full' | 'frozen' | 'frozen+unfreeze'
    reason: str
    preprocessing: Preprocessing
    size_reason: str


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
) -> TrainPlan:
    """``requested``: the TRAIN_MODE setting. ``pretrained``: the start model's weights were
    learned (not random)."""
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
            mode, reason, start_preprocessing, f"{side} px, the pretrained weights' own size"
        )
    side = input_side(typical_shorter_side)
    prep = Preprocessing(
        resize=side, crop=side, mean=start_preprocessing.mean, std=start_preprocessing.std
    )
    return TrainPlan(
        mode,
        reason,
        prep,
        f"{side} px, from the labeled images' typical shorter side ({typical_shorter_side} px)",
    )
