"""The leak guard: a held-out image whose near-twin (the same picture re-saved, resized or
lightly cropped: a new content hash, so a new image to the split) is among the training images
would flatter the candidate on the very images that compare it with the active model. Such
held-out images are left out of the gate's scoring, and the report says how many.

The threshold is calibrated on the labeled images themselves
(:func:`imaging.perceptual.calibrated_threshold`), from a sample chosen by content hash, so a
run on the same data finds the same twins."""

from __future__ import annotations

import numpy as np

from contract.reports import LeakReport
from imaging.perceptual import as_words, calibrated_threshold, distances
from worker.training.dataset import LabeledSet, Sample

#: Labeled images the threshold is calibrated on.
CALIBRATION_SAMPLE = 120
#: Examples the report names.
EXAMPLES = 5


def guard_holdout(labeled: LabeledSet) -> tuple[list[Sample], LeakReport | None]:
    """The held-out images to score (the ones without a near-twin in training), and the
    report; no report where there is nothing to guard (no held-out or training hashes)."""
    hashed = [s for s in labeled.train if s.sha256 in labeled.hashes]
    if not labeled.holdout or not hashed:
        return list(labeled.holdout), None
    everything = [
        s for s in (*labeled.train, *labeled.val, *labeled.holdout) if s.sha256 in labeled.hashes
    ]
    words = as_words([labeled.hashes[s.sha256] for s in everything])
    chosen = sorted(range(len(everything)), key=lambda i: everything[i].sha256)
    chosen = chosen[:CALIBRATION_SAMPLE]
    samples, rows = [], []
    for i in chosen:
        try:
            samples.append(everything[i].path.read_bytes())
            rows.append(i)
        except OSError:
            continue
    threshold = calibrated_threshold(samples, rows, words)
    train_words = as_words([labeled.hashes[s.sha256] for s in hashed])
    kept: list[Sample] = []
    leaked: list[Sample] = []
    for sample in labeled.holdout:
        own = labeled.hashes.get(sample.sha256)
        near = own is not None and bool(np.any(distances(train_words, own) <= threshold.bits))
        (leaked if near else kept).append(sample)
    return kept, LeakReport(
        held_out_left_out=len(leaked),
        examples=[s.rel for s in leaked[:EXAMPLES]],
        threshold_bits=threshold.bits,
        threshold=threshold.reason,
    )
