"""A realistic, reproducible image set: photo-like JPEGs (smooth gradients, shapes, moderate
noise) at 640x480 and 1920x1080, a few portrait phone shots with an EXIF orientation tag, and
some PNGs. Not pure noise (unrealistically slow to decode), not flat colour (unrealistically
fast). Generated once and cached by content parameters under ``bench/results/images``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: (name, size, format, share of the set). Shares sum to 1.
MIX: list[tuple[str, tuple[int, int], str, float]] = [
    ("vga", (640, 480), "JPEG", 0.40),
    ("fhd", (1920, 1080), "JPEG", 0.35),
    ("phone", (1600, 1200), "JPEG", 0.10),  # stored landscape, EXIF says rotate 90°
    ("png", (800, 600), "PNG", 0.15),
]

GENERATOR_VERSION = 2
DEFAULT_CACHE = Path(__file__).parent / "results" / "images"


@dataclass(frozen=True)
class ImageSet:
    folder: Path
    files: list[Path]

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def describe(self) -> dict[str, object]:
        by_kind: dict[str, int] = {}
        for path in self.files:
            kind = path.name.split("_")[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        return {
            "count": len(self.files),
            "bytes": self.total_bytes,
            "mix": by_kind,
            "sizes": {name: f"{w}x{h} {fmt}" for name, (w, h), fmt, _ in MIX},
            "generator_version": GENERATOR_VERSION,
        }


def photo_like(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like RGB image: two-axis colour gradients, blurred shapes, sensor-like noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    # Work at quarter resolution for the smooth parts (fast), upsample, then add fine noise.
    sw, sh = max(8, width // 4), max(8, height // 4)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    x /= sw
    y /= sh
    channels = []
    for _ in range(3):
        a, b, c, d = rng.uniform(-1, 1, 4)
        base = rng.uniform(60, 190)
        wave = np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 6)) * np.cos(
            y * rng.uniform(1, 6) + rng.uniform(0, 6)
        )
        channels.append(base + 60 * (a * x + b * y) + 25 * c * wave + 10 * d * x * y)
    small = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(small)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = int(rng.integers(0, sw)), int(rng.integers(0, sh))
        w, h = int(rng.integers(sw // 12, sw // 3)), int(rng.integers(sh // 12, sh // 3))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        box = (x0, y0, x0 + w, y0 + h)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    small = small.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.6, 2.0))))
    big = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    # Fine texture: moderate Gaussian noise plus a little sharp detail (edges survive JPEG).
    noise = rng.normal(0, rng.uniform(4, 9), size=(height, width, 1)).astype(np.int16)
    noise = noise + rng.normal(0, 3, size=(height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        kwargs: dict[str, object] = {"quality": 88}
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif
        image.save(buffer, "JPEG", **kwargs)
    else:
        image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def plan(count: int) -> list[tuple[str, tuple[int, int], str]]:
    """Which kind each of ``count`` images is, interleaved (not grouped by kind)."""
    kinds: list[tuple[str, tuple[int, int], str]] = []
    quotas = [round(share * count) for *_, share in MIX]
    quotas[0] += count - sum(quotas)
    remaining = list(quotas)
    # Deterministic interleave: pick the kind furthest behind its share.
    for i in range(count):
        best = max(
            range(len(MIX)),
            key=lambda k: (
                (quotas[k] * (i + 1) / count - (quotas[k] - remaining[k])) if remaining[k] else -1e9
            ),
        )
        remaining[best] -= 1
        name, size, fmt, _ = MIX[best]
        kinds.append((name, size, fmt))
    return kinds


def generate(
    count: int, cache: Path = DEFAULT_CACHE, seed: int = 1234, bases: int | None = None
) -> ImageSet:
    """``count`` distinct images (distinct content, so distinct sha256), cached on disk.

    ``bases``: make only that many photo-like images (on every core), and each file from one of
    them with a comment of its own (a JPEG COM segment, a PNG tEXt chunk): distinct bytes and
    hash, the same pixels and decode cost as its base, in a fraction of the time. For a short
    GPU session (``bench/gpu_check.sh``); without it every image is drawn afresh, on one core."""
    if bases is not None and bases < count:
        return _from_bases(count, cache, seed, bases)
    folder = cache / f"v{GENERATOR_VERSION}-s{seed}-n{count}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        names = json.loads(manifest.read_text())
        files = [folder / n for n in names]
        if all(p.is_file() for p in files):
            return ImageSet(folder, files)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, size, fmt) in enumerate(plan(count)):
        image = photo_like(seed * 1_000_003 + i, size)
        orientation = None
        if name == "phone":
            orientation = 6  # shown rotated 90° clockwise: a portrait phone photo
        suffix = ".jpg" if fmt == "JPEG" else ".png"
        path = folder / f"{name}_{i:06d}{suffix}"
        path.write_bytes(encode(image, fmt, orientation))
        files.append(path)
    manifest.write_text(json.dumps([p.name for p in files]))
    return ImageSet(folder, files)


def _from_bases(count: int, cache: Path, seed: int, bases: int) -> ImageSet:
    folder = cache / f"v{GENERATOR_VERSION}b-s{seed}-n{count}-b{bases}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        files = [folder / n for n in json.loads(manifest.read_text())]
        if all(p.is_file() for p in files):
            return ImageSet(folder, files)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = plan(count)
    # One base per (kind, slot): base j of a kind serves every file of that kind with j = i % n.
    per_kind = max(1, bases // len(MIX))
    jobs = sorted({(name, i % per_kind) for i, (name, _, _) in enumerate(kinds)})
    sizes = {name: (size, fmt) for name, size, fmt in kinds}
    with ProcessPoolExecutor() as pool:
        made = pool.map(_base, [(seed, name, slot, *sizes[name]) for name, slot in jobs])
        encoded = dict(zip(jobs, made, strict=True))
    files = []
    for i, (name, _, fmt) in enumerate(kinds):
        data = encoded[(name, i % per_kind)]
        path = folder / f"{name}_{i:06d}{'.jpg' if fmt == 'JPEG' else '.png'}"
        path.write_bytes(_with_comment(data, fmt, f"inbox-classifier bench {seed} {i}".encode()))
        files.append(path)
    manifest.write_text(json.dumps([p.name for p in files]))
    return ImageSet(folder, files)


def _base(job: tuple[int, str, int, tuple[int, int], str]) -> bytes:
    seed, name, slot, size, fmt = job
    kind = [m[0] for m in MIX].index(name)
    image = photo_like(seed * 1_000_003 + kind * 100_000 + slot, size)
    return encode(image, fmt, 6 if name == "phone" else None)


def _with_comment(data: bytes, fmt: str, text: bytes) -> bytes:
    """``data`` with ``text`` added where a decoder skips it: a COM segment right after a
    JPEG's SOI, a tEXt chunk right after a PNG's IHDR."""
    if fmt == "JPEG":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    body = b"Comment\x00" + text
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def extra(count: int, offset: int, cache: Path = DEFAULT_CACHE) -> ImageSet:
    """Another set with different content (for runs that must not hit the dedup cache)."""
    return generate(count, cache, seed=1234 + offset)


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m bench.images")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--bases", type=int, default=None, help="photo-like bases (faster)")
    args = parser.parse_args()
    started = time.monotonic()
    made = generate(args.count, bases=args.bases)
    print(
        f"{len(made.files)} images in {made.folder} ({made.total_bytes / 2**20:.0f} MiB) in "
        f"{time.monotonic() - started:.1f}s"
    )


if __name__ == "__main__":
    main()
