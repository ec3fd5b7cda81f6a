"""A perceptual hash per image, for finding the same picture under other bytes (re-saved, resized,
lightly cropped): the 64-bit DCT hash (pHash). The picture is reduced to 32x32 grey, its 2-D DCT
taken, and the 8x8 lowest frequencies but the DC term compared with their median: one bit each.
Two copies of one photo differ in a few bits; two different photos in about half of them.

The hash is the model's business in nothing: it does not change when a new version is
promoted, costs a few microseconds on an image already decoded, and is 8 bytes in the ledger.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SIDE = 32
KEEP = 8
BITS = 64


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0, :] = math.sqrt(1 / n)
    return matrix.astype(np.float32)


_DCT = _dct_matrix(SIDE)


def phash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit perceptual hash of ``image`` (a PIL image, or an HxWx3 / HxW uint8 array),
    as a signed 64-bit integer (what SQL stores)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = np.asarray(
        image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32
    )
    frequencies = _DCT @ grey @ _DCT.T
    low = frequencies[:KEEP, :KEEP].flatten()[1:]  # the DC term says only how bright it is
    bits = low > np.median(low)
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    value <<= 1  # 63 bits of frequencies, the last one always 0
    return value - (1 << 64) if value >= (1 << 63) else value


def distances(hashes: np.ndarray, one: int) -> np.ndarray:
    """Hamming distance from ``one`` to each of ``hashes`` (int64)."""
    return popcount(np.bitwise_xor(hashes.astype(np.int64), np.int64(one)))


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each int64 of ``values``."""
    as_bytes = values.astype(np.int64).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_BITS[as_bytes].sum(axis=-1, dtype=np.int32)
