"""Pure, typed preprocessing: bytes -> oriented RGB image (:mod:`imaging.decode`, where bad
input is caught) -> uint8 HWC array at model size. Normalisation happens later, on the whole
batch, on the inference device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from imaging.decode import decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
