"""Labeled training data made on disk (noisy images around a colour per class) and settings that
keep a training run to seconds on two cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from contract.settings import Settings

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def write_class(
    folder: Path,
    rgb: tuple[int, int, int],
    count: int,
    seed: int = 0,
    start: int = 0,
    size: int = 64,
) -> list[Path]:
    """``count`` noisy images around colour ``rgb`` (the class), each different."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        rng = np.random.default_rng([seed, *rgb, i])
        base = np.array(rgb) + rng.integers(-40, 40, size=3)
        pixels = base + rng.integers(-50, 50, size=(size, size, 3))
        path = folder / f"img_{i:04d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def make_labeled(
    root: Path,
    per_class: int = 24,
    seed: int = 0,
    classes: tuple[str, ...] = ("red", "green", "blue"),
) -> Path:
    for name in classes:
        write_class(root / name, COLOURS[name], per_class, seed)
    return root


def training_settings(settings: Settings, **changes: object) -> Settings:
    values: dict[str, object] = {
        "labeled_dir": settings.data_dir.parent / "labeled",
        "train_mode": "frozen",
        "train_epochs": 15,
        "train_lr": 1e-3,
        "train_batch_size": 16,
        "train_patience": 5,
        "val_fraction": 0.25,
        "min_images_per_class": 5,
        "torch_threads": 2,
    }
    values.update(changes)
    return settings.model_copy(update=values)
