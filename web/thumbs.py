"""Thumbnails, made once per content hash and cached under ``<data_dir>/thumbs``. Decoding
uses the worker's guards (:mod:`imaging.decode`): a pixel limit against decompression bombs
and the EXIF orientation applied."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

from PIL import Image

from imaging.decode import decode

#: The longest side of each size: a grid tile, and the review page's picture.
SIZES = {"small": 320, "large": 1024}
QUALITY = 82


def thumb_path(cache: Path, sha256: str, size: str) -> Path:
    return cache / size / sha256[:2] / f"{sha256}.jpg"


def cached_thumbnail(cache: Path, sha256: str, size: str) -> Path | None:
    path = thumb_path(cache, sha256, size)
    return path if path.is_file() else None


def make_thumbnail(cache: Path, sha256: str, size: str, data: bytes, max_pixels: int) -> Path:
    """Write the ``size`` thumbnail of ``data`` (whose hash is ``sha256``) atomically; return
    its path. Raises :class:`imaging.decode.BadImage` for what cannot be decoded."""
    side = SIZES[size]
    image = decode(data, max_pixels, min_side=side)
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY, optimize=True)
    final = thumb_path(cache, sha256, size)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, final)
    return final
