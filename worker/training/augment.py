"""How a run augments its training images, chosen from the data:

- **Crops.** Under :data:`SMALL_CROP_BELOW` px, a random crop of the image padded by an eighth
  of its side (reflected), the small-image recipe: every pixel of a 28 px glyph matters, and
  a random-resized crop would zoom it to a few pixels. From there up, ImageNet's
  RandomResizedCrop (keeping at least half of the area below 160 px, 8 % above).
- **Mirroring, only where it keeps the class.** Mirrored clothes are clothes, but a mirrored
  "2" is no digit, and where "left arrow" and "right arrow" are classes a mirror swaps them.
  Before training, a nearest-class-mean check on the training images answers the question
  from the data: class means are fitted on half of them (small greyscale thumbnails), and the
  other half is classified by them as they are, mirrored, and with each class's mirrored mean
  added as a second template of the same class (which is what mirroring teaches a model).
  Where mirrored images stop looking like their class (digits, text) or start looking like
  another (arrows pointing left or right), images are not mirrored (thresholds below).
  ``TRAIN_FLIP=on|off`` overrides it; the report gives the figures either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional
from torchvision.transforms import v2

SMALL_CROP_BELOW = 64  # px
SMALL_INPUT = 160  # px: below, random-resized crops keep at least half the area
# Shares of the check's accuracy above chance that mirroring may cost before images are not
# mirrored: mirrored images classified by the plain class means (Fashion-MNIST's shoes, all
# facing left, lose 21 %; digits 69 %), and the images classified with mirrored class means
# added (arrows that point left or right lose all of it).
MIRROR_UNLIKE = 0.5
MIRROR_CONFUSES = 0.2
CHECK_SIDE = 16  # px: the thumbnails the check compares


@dataclass(frozen=True)
class FlipCheck:
    flip: bool
    reason: str
    check: MirrorCheck | None = None


def decide_flip(setting: str, images: np.ndarray, labels: np.ndarray, classes: int) -> FlipCheck:
    """Whether to mirror training images: ``setting`` (TRAIN_FLIP) 'on'/'off' decides, 'auto'
    asks the data. ``images``: uint8 NHWC squares; ``labels``: their class indices."""
    if setting == "on":
        return FlipCheck(True, "TRAIN_FLIP=on")
    if setting == "off":
        return FlipCheck(False, "TRAIN_FLIP=off")
    if len(images) < 4 * classes:
        return FlipCheck(True, f"auto: {len(images)} images are too few to check; mirrored")
    check = mirror_check(images, labels, classes)
    chance = 1 / classes
    above = check.plain - chance
    figures = (
        f"a nearest-class-mean check gets {check.plain:.2f} of training images right "
        f"(chance {chance:.2f}), {check.mirrored:.2f} of them mirrored, {check.templates:.2f} "
        "with mirrored class means added"
    )
    if above < 0.1:
        return FlipCheck(True, f"auto: mirrored; {figures}: too weak to tell", check)
    unlike = (check.plain - check.mirrored) / above
    confused = (check.plain - check.templates) / above
    if unlike > MIRROR_UNLIKE or confused > MIRROR_CONFUSES:
        why = (
            f"mirrored images look like another class (losing {confused:.0%} of the check's "
            f"accuracy above chance, more than {MIRROR_CONFUSES:.0%})"
            if confused > MIRROR_CONFUSES
            else f"mirrored images are unlike their class (losing {unlike:.0%} of the check's "
            f"accuracy above chance, more than {MIRROR_UNLIKE:.0%}): orientation is part of it"
        )
        return FlipCheck(False, f"auto: not mirrored: {why}; {figures}", check)
    return FlipCheck(
        True,
        f"auto: mirrored: a mirror keeps the class (it loses {max(unlike, 0):.0%} and "
        f"{max(confused, 0):.0%} of the check's accuracy above chance); {figures}",
        check,
    )


@dataclass(frozen=True)
class MirrorCheck:
    plain: float  # test images, the class means
    mirrored: float  # the test images mirrored, the class means
    templates: float  # test images, the class means and their mirrors (same classes)


def mirror_check(images: np.ndarray, labels: np.ndarray, classes: int) -> MirrorCheck:
    """A nearest-class-mean classifier, means from half of the images (a seeded random split),
    scored on the other half: as they are, mirrored, and with each class's mirrored mean added
    as a second template of that class (what mirroring teaches a model)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().mean(1, True)
    x = functional.interpolate(x, size=CHECK_SIDE, mode="area").flatten(1)
    x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
    y = torch.from_numpy(np.asarray(labels)).long()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    fit, test = order[: len(x) // 2], order[len(x) // 2 :]
    present = [c for c in range(classes) if (y[fit] == c).any()]
    means = torch.stack([x[fit][y[fit] == c].mean(0) for c in present])
    names = torch.tensor(present)

    def mirror(rows: torch.Tensor) -> torch.Tensor:
        return rows.view(-1, CHECK_SIDE, CHECK_SIDE).flip(2).flatten(1)

    def accuracy(samples: torch.Tensor, templates: torch.Tensor, classes_of: torch.Tensor) -> float:
        nearest = torch.cdist(samples, templates).argmin(1)
        return float((classes_of[nearest] == y[test]).double().mean())

    return MirrorCheck(
        accuracy(x[test], means, names),
        accuracy(mirror(x[test]), means, names),
        accuracy(x[test], torch.cat([means, mirror(means)]), torch.cat([names, names])),
    )


def training_transform(crop: int, flip: bool) -> tuple[v2.Transform, str]:
    """The augmentation for crops of ``crop`` px, and its description for the report."""
    steps: list[v2.Transform]
    if crop < SMALL_CROP_BELOW:
        # The small-image recipe: reflect-pad, crop the side back at random.
        pad = max(2, crop // 8)
        steps = [v2.Pad(pad, padding_mode="reflect"), v2.RandomCrop(crop)]
        described = f"random {crop} px crops of the image padded by {pad} px"
    else:
        low = 0.08 if crop >= SMALL_INPUT else 0.5
        steps = [v2.RandomResizedCrop(crop, scale=(low, 1.0), antialias=True)]
        described = f"random-resized {crop} px crops of {low:.0%}-100 % of the area"
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    mirror = ", mirrored half the time" if flip else ", never mirrored"
    return v2.Compose(steps), described + mirror
