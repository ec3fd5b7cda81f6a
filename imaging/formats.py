"""Which image format a file really is (from its bytes, not its name): for the extension of a
training copy and the media type an original is served with."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True, slots=True)
class Format:
    extension: str
    media_type: str


FORMATS = {
    "JPEG": Format(".jpg", "image/jpeg"),
    "MPO": Format(".jpg", "image/jpeg"),  # multi-picture JPEG (phones): a JPEG first frame
    "PNG": Format(".png", "image/png"),
    "GIF": Format(".gif", "image/gif"),
    "WEBP": Format(".webp", "image/webp"),
    "BMP": Format(".bmp", "image/bmp"),
    "TIFF": Format(".tif", "image/tiff"),
    "PPM": Format(".ppm", "image/x-portable-anymap"),
}


def sniff(data: bytes) -> Format | None:
    """The format of ``data`` when it is one this project can train on and serve, else None.
    Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            name = image.format or ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return FORMATS.get(name)
