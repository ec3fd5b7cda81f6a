"""The perceptual hash and the near-duplicate groups, on real encoded pictures: copies (re-saved,
resized, cropped) grouped with their originals, distinct pictures left alone, and the
threshold measured on the collection itself."""

from __future__ import annotations

import io

import numpy as np
import pytest

from imaging.decode import decode
from imaging.perceptual import (
    as_words,
    calibrated_threshold,
    distances,
    file_phash,
    groups,
    hash_side,
    near_pairs,
    phash,
)
from tests.helpers.images import photo_like, re_saved

LIMIT = 10**8


def _png(image) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def collection() -> tuple[list[bytes], dict[int, int]]:
    """60 distinct pictures of three sizes, and re-saved copies of the first 15 (copy row ->
    original row)."""
    sizes = [(160, 120), (320, 240), (200, 300)]
    originals = [photo_like(seed, sizes[seed % 3]) for seed in range(60)]
    files = [_png(image) for image in originals]
    copies = {}
    for seed in range(15):
        quality, scale = (60, 0.8) if seed % 2 else (85, 0.6)
        copies[len(files)] = seed
        files.append(re_saved(originals[seed], quality=quality, scale=scale))
    return files, copies


def test_copies_join_their_originals_and_distinct_pictures_stay_apart(collection) -> None:  # type: ignore[no-untyped-def]
    files, copies = collection
    words = as_words([file_phash(data, LIMIT) for data in files])
    sample = list(range(0, len(files), 2))
    threshold = calibrated_threshold([files[i] for i in sample], sample, words)
    found = groups(words, threshold.bits)
    group_of = {row: n for n, group in enumerate(found) for row in group}
    joined = sum(
        1
        for copy, original in copies.items()
        if group_of.get(copy, -1) == group_of.get(original, -2)
    )
    assert joined == len(copies), (threshold.reason, found)
    strays = [row for row in range(15, 60) if row in group_of]
    assert not strays, (threshold.reason, strays)
    assert "edited copies of" in threshold.reason


def test_the_hash_does_not_depend_on_the_decode_size() -> None:
    """The worker decodes at the model's size (a JPEG at a fraction of its own); the hash of
    the same file must come out the same, or nearly, whatever that size was."""
    data = re_saved(photo_like(7, (1600, 1200)), quality=90, scale=1.0, crop=0.0)
    small = file_phash(data, LIMIT)
    for side in (32, 224, 512):
        other = phash(decode(data, LIMIT, min_side=hash_side(side)))
        assert int(distances(as_words([small]), other)[0]) <= 12


def test_near_pairs_matches_a_direct_comparison() -> None:
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(700, 4), dtype=np.int64).view(np.uint64)
    words[650:] = words[:50]
    words[650:, 0] ^= np.uint64(0b1011)  # 50 rows three bits from another
    pairs = {tuple(p) for p in near_pairs(words, 3).tolist()}
    assert pairs == {(i, 650 + i) for i in range(50)}


def test_too_few_images_to_measure_fall_back_to_a_stated_threshold() -> None:
    files = [_png(photo_like(seed)) for seed in range(3)]
    words = as_words([file_phash(d, LIMIT) for d in files])
    found = calibrated_threshold(files, [0, 1, 2], words)
    assert found.copies == 3 and "too few" in found.reason
