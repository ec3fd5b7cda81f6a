"""The bad-input corpus: file kinds whose bytes are the whole story, odd names and places, and
what only the watcher meets, each with the outcome it must end in. Used by the bad-input tests
at every level and by the device-decode tests."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.images import random_image

DONE, FAILED, IGNORED = "done", "failed", "ignored"
LIMIT = 100_000_000


# --- the corpus --------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width`` x ``height``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def _png_bad_header_crc(seed: int) -> bytes:
    data = bytearray(encode(random_image(seed, (64, 48)), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def _png_corrupt_idat(seed: int) -> bytes:
    data = bytearray(encode(random_image(seed, (64, 48)), "PNG"))
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length // 2] ^= 0xFF  # compressed pixels (its CRC no longer matches either)
    return bytes(data)


def _truncated_jpeg(seed: int) -> bytes:
    data = encode(Image.effect_noise((400, 300), 60).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 3]


def exif_rotated_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    return encode(random_image(seed, (200, 100)), "JPEG", exif=exif)


def _sixteen_bit_png(seed: int) -> bytes:
    ramp = (np.arange(64 * 48).reshape(48, 64) * 20 + seed).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def _palette_with_transparency(seed: int) -> bytes:
    image = random_image(seed, (60, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    return encode(image, "PNG", transparency=0)


def animated_gif(seed: int) -> bytes:
    frames = [random_image(seed + i, (50, 40)).convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def multipage_tiff(seed: int) -> bytes:
    pages = [random_image(seed + i, (50, 40)) for i in range(3)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    """One corpus entry: its path relative to the inbox, what it must end as, and (for
    failures) a fragment of the reason."""

    rel: str
    expect: str
    reason: str = ""
    content: Callable[[int], bytes] | None = None  # None: made by the end-to-end test itself


# File kinds: the bytes are the whole story (usable at every level).
CONTENT_CASES: list[Case] = [
    Case("zero-byte.jpg", FAILED, "empty file", lambda s: b""),
    Case("truncated.jpg", FAILED, "truncated", _truncated_jpeg),
    Case("bad-header-crc.png", FAILED, "not a recognised image", _png_bad_header_crc),
    Case("corrupt-pixels.png", FAILED, "corrupt", _png_corrupt_idat),
    Case("text.jpg", FAILED, "not a recognised image", lambda s: b"just some text\n" * 20),
    Case("page.png", FAILED, "not a recognised image",
         lambda s: b"<!doctype html><html><body>not a png</body></html>"),
    Case("bomb.png", FAILED, "decompression bomb", lambda s: _png_declaring(100_000, 100_000)),
    Case("bomb-under-pil-limit.png", FAILED, "pixel limit",
         lambda s: _png_declaring(12_000, 10_000)),  # 120 Mpx: over our 100 Mpx, under PIL's
    Case("notes.txt", FAILED, "not a recognised image", lambda s: b"a text file, any name"),
    Case("one-pixel.png", DONE, "", lambda s: encode(random_image(s, (1, 1)), "PNG")),
    Case("strip.png", DONE, "", lambda s: encode(random_image(s, (20_000, 100)), "PNG")),
    Case("cmyk.jpg", DONE, "", lambda s: encode(random_image(s).convert("CMYK"), "JPEG")),
    Case("sixteen-bit.png", DONE, "", _sixteen_bit_png),
    Case("palette-transparent.png", DONE, "", _palette_with_transparency),
    Case("grey-alpha.png", DONE, "", lambda s: encode(random_image(s).convert("LA"), "PNG")),
    Case("grey.jpg", DONE, "", lambda s: encode(random_image(s).convert("L"), "JPEG")),
    Case("animated.gif", DONE, "", animated_gif),
    Case("multipage.tiff", DONE, "", multipage_tiff),
    Case("photo.webp", DONE, "", lambda s: encode(random_image(s), "WEBP")),
    Case("exif-rotated.jpg", DONE, "", exif_rotated_jpeg),
    Case("png-named.jpg", DONE, "", lambda s: encode(random_image(s), "PNG")),
    Case("UPPER.JPEG", DONE, "", lambda s: encode(random_image(s), "JPEG")),
]

# Name and place kinds: good JPEGs where only the path is odd.
LONG_DIRS = "/".join(["d" * 100, "e" * 100, "f" * 100])  # > 255 bytes, each part legal
NAME_CASES: list[Case] = [
    Case("with some spaces.jpg", DONE),
    Case("ünïcødé 猫 🐈.jpg", DONE),
    Case("new\nline.jpg", DONE),
    Case("-leading-dash.jpg", DONE),
    Case("--help.jpg", DONE),
    Case(os.fsdecode(b"not-utf8-\xff\xfe.jpg"), DONE),  # a name that is bytes, not text
    Case(f"{LONG_DIRS}/long-path.jpg", DONE),
]

# Only the watcher meets these.
WATCHER_CASES: list[Case] = [
    Case("link-outside.jpg", IGNORED),  # symlink to a file outside the inbox
    Case("fifo.jpg", IGNORED),
    Case("device.jpg", IGNORED),  # a character device (mknod; needs root)
    Case(".hidden.jpg", IGNORED),
    Case("download.jpg.part", IGNORED),
    Case("slow-writer.jpg", DONE),  # written over 5 s
    Case("dropped-folder/a.jpg", DONE),  # a folder moved in whole
    Case("dropped-folder/sub/b.jpg", DONE),
]


def write_content(inbox: Path, cases: list[Case], seed: int = 0) -> list[Path]:
    paths = []
    for i, case in enumerate(cases):
        assert case.content is not None
        path = inbox / case.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.content(seed + i))
        paths.append(path)
    return paths


def write_names(inbox: Path, cases: list[Case], seed: int = 500) -> list[Path]:
    paths = []
    for i, case in enumerate(cases):
        path = inbox / case.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        random_image(seed + i).save(path, "JPEG")
        paths.append(path)
    return paths


def _name(case: Case) -> str:
    return os.path.basename(case.rel)


def name_of(case: Case) -> str:
    return os.path.basename(case.rel)
