"""Real image files for tests: noisy, not trivially compressible, in several formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_image(seed: int, size: tuple[int, int] = (96, 72), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 255, size=(3,), dtype=np.uint8)
    noise = rng.integers(-40, 40, size=(height, width, 3))
    pixels = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return image if mode == "RGB" else image.convert(mode)


def write_image(
    path: Path, seed: int, size: tuple[int, int] = (96, 72), fmt: str | None = None
) -> Path:
    """Write a distinct image (content depends on ``seed``) to ``path``; format from suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(seed, size).save(path, format=fmt)
    return path


def write_images(folder: Path, count: int, start_seed: int = 0, suffix: str = ".jpg") -> list[Path]:
    return [
        write_image(folder / f"img_{start_seed + i:05d}{suffix}", start_seed + i)
        for i in range(count)
    ]
