"""Unit tests of the pure preprocessing functions, on real encoded images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imaging.decode import BadImage, decode, to_rgb
from worker.model.preprocess import Preprocessing, load_for_model, resize_crop

PREP = Preprocessing()
LIMIT = 100_000_000


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_output_is_model_sized_uint8_for_many_shapes() -> None:
    for size in [(640, 480), (1920, 1080), (1, 1), (20000, 100), (100, 3000)]:
        data = encode(Image.new("RGB", size, (10, 200, 30)), "PNG")
        array = load_for_model(data, PREP, LIMIT)
        assert array.shape == (224, 224, 3) and array.dtype == np.uint8


def test_matches_torchvision_resize_and_center_crop() -> None:
    import torchvision.transforms as T

    y, x = np.mgrid[0:480, 0:640]
    smooth = np.stack([x % 256, y % 256, (x + y) // 5 % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(smooth)
    ours = resize_crop(image, PREP).astype(int)
    reference = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(image)).astype(int)
    assert np.abs(ours - reference).mean() < 3.0


def test_jpeg_is_scaled_on_decode_but_keeps_enough_pixels() -> None:
    data = encode(Image.new("RGB", (1920, 1080), (90, 90, 90)), "JPEG")
    image = decode(data, LIMIT, min_side=256)
    assert min(image.size) >= 256 and image.size[0] < 1920


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode(encode(image, "JPEG", exif=exif), LIMIT, min_side=16)
    width, height = decoded.size  # scaled on decode, but now portrait
    assert height == 2 * width


@pytest.mark.parametrize(
    "mode",
    ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1", "YCbCr"],
)
def test_any_mode_becomes_rgb(mode: str) -> None:
    image = Image.new("RGB", (32, 32), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr", "L") else "PNG"
    if mode in ("1",):
        fmt = "PNG"
    decoded = decode(encode(image, fmt), LIMIT, min_side=16)
    assert decoded.mode == "RGB"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb.max() > 200 and rgb.min() < 10 and len(np.unique(rgb)) > 100


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_rgb_image_is_not_copied() -> None:
    image = Image.new("RGB", (8, 8))
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text pretending to be a jpeg", "not a recognised image"),
        (b"<html><body>nope</body></html>", "not a recognised image"),
    ],
)
def test_non_images_are_bad(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        load_for_model(data, PREP, LIMIT)


def test_truncated_jpeg_is_bad() -> None:
    data = encode(Image.effect_noise((400, 300), 60).convert("RGB"), "JPEG")
    with pytest.raises(BadImage, match="corrupt or truncated"):
        load_for_model(data[: len(data) // 2], PREP, LIMIT)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(BadImage, match="pixel limit"):
        load_for_model(data, PREP, max_pixels=1_000_000)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("P", (40, 40), i) for i in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_for_model(buffer.getvalue(), PREP, LIMIT).shape == (224, 224, 3)
