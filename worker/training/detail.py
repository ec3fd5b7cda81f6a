"""How much detail the labeled images carry, whatever size they are stored at.

Thumbnails, scans and exports are often stored larger than the detail they hold: a 28 px drawing
saved as a 64 px PNG is a 28 px image. Training at the stored size then costs several times the
compute for nothing, and a rule keyed to the stored size (the small-input stem below 64 px) gives
the same content two recipes. So the run measures the content: each sampled image is shrunk to a
smaller side and enlarged back, and the share of its variance that the round trip loses is
taken as the detail that side cannot hold. The content side is the smallest side at which the
typical (median) image loses at most :data:`TOLERANCE` of it; 28 px Fashion-MNIST images stored
at 28, 64 or 96 px all come out at 28 px (docs/training.md has the table).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The share of an image's variance a shrink-and-enlarge round trip may lose and still count
#: as keeping its detail. Genuine 28 px images lose 5-6 % at 24 px; the same images enlarged to
#: 64 px lose under 1 % at 28 px (measured, docs/training.md).
TOLERANCE = 0.02
#: Sides tried, smallest first. Above 224 px nothing changes: no run trains larger.
SIDES = (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224)
#: Images larger than this are first reduced to it (their detail above it is not trained on).
WORK_SIDE = 448


@dataclass(frozen=True)
class ContentSize:
    side: int  # px of shorter side the content needs
    stored: int  # the typical stored shorter side
    reason: str


def round_trip_loss(image: np.ndarray, side: int) -> float:
    """The share of ``image``'s variance (a 2-D grey array) lost by shrinking its shorter
    side to ``side`` px and enlarging it back."""
    height, width = image.shape
    shorter = min(height, width)
    if side >= shorter:
        return 0.0
    variance = float(image.var())
    if variance < 1e-6:  # a flat image carries no detail at any size
        return 0.0
    picture = Image.fromarray(image, mode="F")
    small = picture.resize(
        (max(1, round(width * side / shorter)), max(1, round(height * side / shorter))),
        Image.Resampling.BOX,
    )
    back = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return float(((back - image) ** 2).mean()) / variance


def as_grey(image: Image.Image) -> np.ndarray:
    """A float32 grey array, reduced to :data:`WORK_SIDE` px of shorter side at most."""
    grey = image.convert("L")
    shorter = min(grey.size)
    if shorter > WORK_SIDE:
        scale = WORK_SIDE / shorter
        grey = grey.resize(
            (round(grey.width * scale), round(grey.height * scale)), Image.Resampling.BOX
        )
    return np.asarray(grey, dtype=np.float32)


def content_size(images: Sequence[Image.Image]) -> ContentSize:
    """The smallest side at which the median image keeps its detail (see the module)."""
    if not images:
        return ContentSize(224, 0, "no images to measure: 224 px")
    arrays = [as_grey(image) for image in images]
    stored = int(statistics.median(min(image.size) for image in images))
    ceiling = min(stored, SIDES[-1])
    for side in SIDES:
        if side >= ceiling:
            break
        loss = statistics.median(round_trip_loss(a, side) for a in arrays)
        if loss <= TOLERANCE:
            smaller = [s for s in SIDES if s < side]
            before = ""
            if smaller:
                lost = statistics.median(round_trip_loss(a, smaller[-1]) for a in arrays)
                before = f"; at {smaller[-1]} px {lost:.1%}"
            return ContentSize(
                side,
                stored,
                f"stored at {stored} px, they carry the detail of {side} px (shrunk to {side} px "
                f"and back, the median image loses {loss:.1%} of its variance{before})",
            )
    return ContentSize(
        ceiling,
        stored,
        f"stored at {stored} px, they carry detail at every smaller size tried (more than "
        f"{TOLERANCE:.0%} of the variance lost below {ceiling} px)",
    )
