"""Pure, typed preprocessing: bytes -> oriented RGB image -> uint8 HWC array at model size.

Decoding is where bad input is caught: every failure becomes :class:`BadImage` with a reason a
person can act on. Normalisation happens later, on the whole batch, on the inference device.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.failures import FailureKind, Unusable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImage(Unusable):
    """The file can never be classified (corrupt, not an image, too large). Permanent."""


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """Eval transform: shorter side to ``resize``, centre crop ``crop``, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocessing:
        mean = data.get("mean", IMAGENET_MEAN)
        std = data.get("std", IMAGENET_STD)
        return cls(
            resize=int(data.get("resize", 256)),  # type: ignore[call-overload]
            crop=int(data.get("crop", 224)),  # type: ignore[call-overload]
            mean=tuple(float(x) for x in mean),  # type: ignore[arg-type, attr-defined]
            std=tuple(float(x) for x in std),  # type: ignore[arg-type, attr-defined]
        )


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


def resize_crop(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize shorter side to ``prep.resize`` and centre-crop ``prep.crop``, as one resample:
    only the source region that lands in the crop is resampled. Returns uint8 HWC."""
    width, height = image.size
    scale = prep.resize / min(width, height)
    # The crop's extent measured in source pixels, centred.
    src_w = min(width, prep.crop / scale)
    src_h = min(height, prep.crop / scale)
    left = (width - src_w) / 2
    top = (height - src_h) / 2
    out_w = max(1, round(src_w * scale))
    out_h = max(1, round(src_h * scale))
    resized = image.resize(
        (out_w, out_h), Image.Resampling.BILINEAR, box=(left, top, left + src_w, top + src_h)
    )
    array = np.asarray(resized, dtype=np.uint8)
    if array.shape[0] != prep.crop or array.shape[1] != prep.crop:
        # Images smaller than the crop after scaling (e.g. a 20000x100 strip): pad with black.
        padded = np.zeros((prep.crop, prep.crop, 3), dtype=np.uint8)
        h, w = min(prep.crop, array.shape[0]), min(prep.crop, array.shape[1])
        top_pad, left_pad = (prep.crop - h) // 2, (prep.crop - w) // 2
        padded[top_pad : top_pad + h, left_pad : left_pad + w] = array[:h, :w]
        array = padded
    return array


def load_for_model(data: bytes, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Bytes to the model's uint8 HWC input. Raises :class:`BadImage`."""
    return resize_crop(decode(data, max_pixels, min_side=prep.resize), prep)
