"""The "sure" threshold holds with confidence, not only on average: on synthetic scores with a
known precision curve, the set it certifies is truly at least 95 % right in at least 9 validation
sets in 10; a smaller validation set certifies fewer images; too small a one, none."""

from __future__ import annotations

import numpy as np
import torch

from worker.training.calibration import SURE_CONFIDENCE, certified_threshold, error_upper_bound

TARGET = 0.95


def _validation(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidences uniform on [0.5, 1], each right with probability equal to it: the images
    at or above t are right (1 + t) / 2 of the time, so 95 % exactly from t = 0.9 up."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    right = rng.uniform(0, 1, n) < confidence
    return torch.tensor(confidence), torch.tensor(right)


def _true_precision(threshold: float) -> float:
    return (1 + threshold) / 2


def test_the_certified_set_is_truly_95_percent_right_in_at_least_9_sets_in_10() -> None:
    seeds = 200
    misses = 0
    certified = 0
    for seed in range(seeds):
        threshold = certified_threshold(*_validation(1000, seed), TARGET)
        if threshold is None:
            continue
        certified += 1
        misses += _true_precision(threshold) < TARGET
    assert certified > seeds // 3, "it certifies something on 1,000 images often"
    assert misses <= (1 - SURE_CONFIDENCE) * seeds, f"{misses} of {seeds} sets missed 95 %"


def test_fewer_validation_images_certify_fewer_and_too_few_none() -> None:
    def mean_threshold(n: int) -> float:
        found = [certified_threshold(*_validation(n, s), TARGET) for s in range(60)]
        return float(np.mean([1.0 if t is None else t for t in found]))

    assert mean_threshold(100) > mean_threshold(400) > mean_threshold(2000)
    assert certified_threshold(*_validation(40, 0), TARGET) is None  # fewer than 45 images


def test_the_bound_is_clopper_pearsons() -> None:
    assert abs(error_upper_bound(0, 45, 0.1) - 0.04988) < 1e-4
    assert abs(error_upper_bound(5, 200, 0.1) - 0.04588) < 1e-4
    assert error_upper_bound(3, 3, 0.1) == 1.0
