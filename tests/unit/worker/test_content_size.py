"""The input size follows the detail the images carry, not the size they are stored at: the same
content stored at 28, 64 and 96 px gets the same input size; content that fills 64 px keeps it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from worker.training.detail import SIDES, TOLERANCE, content_size, round_trip_loss
from worker.training.plan import input_side


def _drawing(seed: int, side: int = 28) -> Image.Image:
    """A small grey drawing with edges and texture at its own scale (like Fashion-MNIST)."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, side - 6, 2))
        x1, y1 = x0 + int(rng.integers(5, side // 2)), y0 + int(rng.integers(5, side // 2))
        draw.rectangle((x0, y0, x1, y1), fill=int(rng.integers(80, 255)))
    noise = rng.normal(0, 25, (side, side))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8), "L")


def _detailed(seed: int, side: int) -> Image.Image:
    """Content with detail at every scale up to ``side`` (photo grain)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8), "L")
    return base.filter(ImageFilter.GaussianBlur(0.6))


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR])
def test_the_same_content_stored_at_three_sizes_gets_one_input_size(
    resample: Image.Resampling,
) -> None:
    originals = [_drawing(seed) for seed in range(24)]
    found = {}
    for stored in (28, 64, 96):
        images = [o if stored == 28 else o.resize((stored, stored), resample) for o in originals]
        found[stored] = content_size(images)
    sides = [found[s].side for s in (28, 64, 96)]
    step = SIDES.index(max(sides)) - SIDES.index(min(sides))
    assert step <= 1, {s: c.reason for s, c in found.items()}
    assert len({input_side(side) for side in sides}) == 1
    assert "stored at 64 px" in found[64].reason


def test_content_that_fills_its_pixels_keeps_its_size() -> None:
    assert content_size([_detailed(seed, 64) for seed in range(16)]).side == 64
    big = content_size([_detailed(seed, 500) for seed in range(4)])
    assert big.side == SIDES[-1] and big.stored == 500  # trained at most at 224


def test_the_round_trip_loss_is_zero_at_the_stored_size_and_grows_below() -> None:
    image = np.asarray(_detailed(1, 64), dtype=np.float32)
    losses = [round_trip_loss(image, side) for side in (16, 32, 48, 64)]
    assert losses[-1] == 0.0 and losses[0] > losses[1] > losses[2] > TOLERANCE
