"""A perceptual hash per image, for finding the same picture under other bytes (re-saved,
resized, lightly cropped): a 256-bit DCT hash. The picture is reduced to 32x32 grey, its 2-D
DCT taken, and the 16x16 lowest frequencies but the DC term compared with their median: one
bit each (the last bit is always 0). Two copies of one photo differ in a few dozen bits, two
different photos in about half of them.

256 bits rather than pHash's usual 64: look-alike collections (product shots on one
background, scans of one form) sit too close at 64 bits for any threshold to separate copies
from neighbours; docs/web.md has the measurements. The hash is independent of the model (it
does not change when a new version is promoted), costs about 0.2 ms on an image already
decoded, and is 32 bytes in the ledger.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDE = 32
KEEP = 16
BYTES = KEEP * KEEP // 8
WORDS = BYTES // 8
BITS = KEEP * KEEP


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0, :] = math.sqrt(1 / n)
    return matrix.astype(np.float32)


_DCT = _dct_matrix(SIDE)[:KEEP]


def phash(image: Image.Image | np.ndarray) -> bytes:
    """The 256-bit perceptual hash of ``image`` (a PIL image, or an HxWx3 / HxW uint8 array)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = np.asarray(
        image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32
    )
    low = (_DCT @ grey @ _DCT.T).ravel()[1:]  # the DC term says only how bright it is
    bits = np.zeros(KEEP * KEEP, dtype=bool)
    bits[:-1] = low > np.median(low)
    return np.packbits(bits).tobytes()


def hash_side(side: int) -> int:
    """The shorter side to decode at (at least) for a hash and a model input of ``side``:
    the hash wants twice its own side, whatever the model wants."""
    return max(side, SIDE * 2)


def file_phash(data: bytes, max_pixels: int) -> bytes:
    """The hash of an encoded image, decoded as small as its format allows (a JPEG at an
    eighth of its size): what the classify worker stores for it."""
    from imaging.decode import decode

    return phash(decode(data, max_pixels, min_side=hash_side(0)))


def as_words(hashes: Sequence[bytes]) -> np.ndarray:
    """Hashes as an (N, 4) uint64 array, what :func:`distances` and :func:`groups` take."""
    if not hashes:
        return np.zeros((0, WORDS), dtype=np.uint64)
    return np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(-1, WORDS)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per row of the last axis' uint64 words."""
    if hasattr(np, "bitwise_count"):  # NumPy 2: one instruction per word
        return np.bitwise_count(words).sum(axis=-1, dtype=np.int32)
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return _BYTE_BITS[as_bytes].sum(axis=-1, dtype=np.int32)


def distances(words: np.ndarray, one: bytes) -> np.ndarray:
    """Hamming distance from ``one`` to each row of ``words``."""
    return _popcount(np.bitwise_xor(words, as_words([one])[0]))


# --- how close is a copy: calibrated on the collection itself ---------------------------------


def edited_copy(data: bytes, rng: random.Random) -> Image.Image:
    """What happens to a picture on its way to becoming "another file": trimmed by up to 5 %
    (unevenly), scaled to 75-100 %, saved as a JPEG of quality 50-90 and opened again."""
    from imaging.decode import decode

    image = decode(data, 10**9, min_side=SIDE * 8).convert("RGB")
    width, height = image.size
    trim = [rng.uniform(0, 0.025) for _ in range(4)]
    box = (
        round(width * trim[0]),
        round(height * trim[1]),
        width - round(width * trim[2]),
        height - round(height * trim[3]),
    )
    scale = rng.uniform(0.75, 1.0)
    image = image.crop(box)
    image = image.resize(
        (max(8, round(image.width * scale)), max(8, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=rng.randint(50, 90))
    out.seek(0)
    return Image.open(out)


@dataclass(frozen=True)
class Threshold:
    """The largest Hamming distance at which two images count as near-duplicates, and how it
    was found (the API and the CLI report it)."""

    bits: int
    copies: int  # edited copies measured
    reason: str


#: Share of edited copies the threshold reaches, and the bits it adds beyond them.
COPY_COVERAGE = 0.95
MARGIN_BITS = 2
#: A collection where more than this share of images has two others as close as an edited
#: copy is one of look-alikes; its threshold keeps to the closest tenth of neighbours.
LOOKALIKE_SHARE, LOOKALIKE_KEEP = 0.5, 0.1
#: Below this many measured copies, the threshold of varied photos is used.
MIN_COPIES = 20
#: What edited copies of varied photos (bench.mistakes) move the 256-bit hash by, at most.
PHOTO_BITS = 48


def calibrated_threshold(
    samples: Sequence[bytes], sample_rows: Sequence[int], words: np.ndarray, seed: int = 0
) -> Threshold:
    """The threshold for this collection: how far ordinary edits (:func:`edited_copy`) move
    the hashes of a random sample of it (``samples``, the bytes of the images at
    ``sample_rows`` of ``words``), the distance :data:`COPY_COVERAGE` of those edited copies
    stay within, plus :data:`MARGIN_BITS`. Grainy or detailed pictures move further under
    edits than clean ones, so a fixed number would either miss their copies or group clean
    look-alikes. The reason says how many of the sample have another image of the collection
    within the threshold: where that is far above the copies a collection holds, its images
    look alike at this level of detail (docs/web.md)."""
    rng = random.Random(seed)
    moved: list[int] = []
    nearest: list[int] = []
    second: list[int] = []  # the second nearest: far for a copy's pair, near among look-alikes
    for data, row in zip(samples, sample_rows, strict=True):
        try:
            copy = phash(edited_copy(data, rng))
        except Exception:  # an image that cannot be decoded says nothing about the others
            continue
        moved.append(int(distances(words[row : row + 1], copy)[0]))
        others = np.sort(np.delete(distances(words, words[row].tobytes()), row))
        nearest.append(int(others[0]) if len(others) else BITS + 1)
        second.append(int(others[1]) if len(others) > 1 else BITS + 1)
    if len(moved) < MIN_COPIES:
        return Threshold(
            PHOTO_BITS,
            len(moved),
            f"{PHOTO_BITS} bits: {len(moved)} image(s) to measure, too few; the threshold of "
            "varied photos",
        )
    reach = int(np.quantile(np.array(moved), COPY_COVERAGE, method="higher"))
    bits = min(BITS // 2, reach + MARGIN_BITS)
    near = float(np.mean(np.array(nearest) <= bits))
    crowded = float(np.mean(np.array(second) <= bits))
    lookalike = ""
    if crowded > LOOKALIKE_SHARE:
        # Most images have two others as close as an edited copy: not copies (a collection
        # full of copies gives an image one twin, not a crowd) but pictures that look alike at
        # this size (tiny thumbnails of one kind of thing). Grouping would join them all;
        # keep to the closest tenth of the nearest-neighbour distances instead.
        bits = int(np.quantile(np.array(nearest), LOOKALIKE_KEEP, method="lower"))
        lookalike = (
            f"; {crowded:.0%} of these images have two others that close: look-alikes at "
            f"this size, so the threshold is cut to {bits} (copies will be missed)"
        )
        near = float(np.mean(np.array(nearest) <= bits))
    return Threshold(
        bits,
        len(moved),
        f"{bits} bits: edited copies of {len(moved)} images here moved by "
        f"{int(np.median(moved))} bits (median), {COPY_COVERAGE:.0%} of them by at most {reach}"
        f"{lookalike}; {near:.0%} of these images have another within {bits} (the nearest "
        f"typically {int(np.median(nearest))} bits away)",
    )


# --- groups ---------------------------------------------------------------------------------

#: Rows compared at once in :func:`near_pairs`, against COLUMNS rows at a time (BLOCK x
#: COLUMNS x 4 words, 64 MiB, in memory).
BLOCK = 256
COLUMNS = 8192


def near_pairs(
    words: np.ndarray,
    bits: int,
    on_block: Callable[[], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Every pair (i, j), i < j, of rows of ``words`` within ``bits``, for the rows j in
    [``start``, ``stop``) against every row before them: the whole triangle by default, or
    only what rows added since ``start`` bring. Brute force in blocks (docs/web.md says how
    far that goes)."""
    stop = len(words) if stop is None else min(stop, len(words))
    found: list[np.ndarray] = []
    for first in range(start, stop, BLOCK):
        last = min(first + BLOCK, stop)
        block = words[first:last]
        for left in range(0, last, COLUMNS):  # bounded memory on a ledger of any size
            earlier = words[left : min(left + COLUMNS, last)]
            close = _popcount(np.bitwise_xor(block[:, None, :], earlier[None, :, :])) <= bits
            rows, cols = np.nonzero(close)
            rows += first
            cols += left
            keep = cols < rows
            found.append(np.stack([cols[keep], rows[keep]], axis=1))
        if on_block is not None:
            on_block()
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def groups(words: np.ndarray, bits: int) -> list[list[int]]:
    """Rows of ``words`` in groups of near-duplicates (two or more, linked by chains of pairs
    within ``bits``), each group in row order, the groups by their first row."""
    return linked(len(words), near_pairs(words, bits).tolist())


def linked(count: int, pairs: Iterable[Sequence[int]]) -> list[list[int]]:
    """Rows 0..``count``-1 in the groups that chains of ``pairs`` link (two or more each), each
    group in row order, the groups by their first row."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(count):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
