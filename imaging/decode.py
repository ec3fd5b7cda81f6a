"""Decoding untrusted image bytes, with the guards every reader of the inbox needs: a pixel
limit (decompression bombs), EXIF orientation applied, any mode to RGB, and every failure a
:class:`BadImage` with a kind and a reason a person can act on. The worker decodes for the
model with it; the web app for thumbnails."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.failures import FailureKind, Unusable


class BadImage(Unusable):
    """The file can never be classified (corrupt, not an image, too large). Permanent."""


def decode(data: bytes, max_pixels: int, min_side: int = 256) -> Image.Image:
    """Decode ``data`` to an RGB image with its EXIF orientation applied.

    JPEGs are scaled on decode (libjpeg DCT scaling) to the smallest size that still has a
    shorter side of at least ``min_side``: decoding at 1/2, 1/4 or 1/8 scale skips most of the
    work of a full decode, and leaves the resize that follows less to do.
    """
    if not data:
        raise BadImage(FailureKind.EMPTY, "empty file (0 bytes)")
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(FailureKind.NOT_IMAGE, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(FailureKind.TOO_LARGE, f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(FailureKind.NOT_IMAGE, f"unreadable image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(
            FailureKind.TOO_LARGE,
            f"image is {width}x{height} = {width * height:,} pixels, over the "
            f"{max_pixels:,}-pixel limit (decompression bomb guard)",
        )
    if width < 1 or height < 1:
        raise BadImage(FailureKind.CORRUPT, f"image has no pixels ({width}x{height})")
    try:
        if image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise BadImage(FailureKind.TOO_LARGE, f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise BadImage(FailureKind.CORRUPT, f"corrupt or truncated image: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels over white. Leaves RGB images untouched
    (``convert("RGB")`` on an RGB image would copy it for nothing)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: convert("RGB") would clip everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max()) or 1.0
        grey = np.clip(array * (255.0 / max(peak, 255.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low or 1.0))
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
