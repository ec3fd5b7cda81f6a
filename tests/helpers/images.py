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


def photo_like(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A picture with the structure of a photo (a gradient sky, a few shapes, light grain),
    distinct for each seed: what near-duplicate detection must tell apart."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 255, (2, 3))
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((height, width, 3))
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(0, 0.8) * width, rng.uniform(0, 0.8) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.5) * width, y0 + rng.uniform(0.1, 0.5) * height
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8), "RGB")


def re_saved(
    image: Image.Image, quality: int = 60, scale: float = 0.8, crop: float = 0.04
) -> bytes:
    """``image`` as another file of the same picture: cropped by ``crop`` of each side in all
    (half on each side), resized by ``scale``, saved as a JPEG of ``quality``."""
    import io

    width, height = image.size
    dx, dy = round(width * crop / 2), round(height * crop / 2)
    edited = image.crop((dx, dy, width - dx, height - dy))
    edited = edited.resize(
        (round(edited.width * scale), round(edited.height * scale)), Image.Resampling.BILINEAR
    )
    out = io.BytesIO()
    edited.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()
