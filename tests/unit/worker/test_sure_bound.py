"""The "sure" threshold holds with confidence, not only on average: on synthetic scores with a
known precision curve, the set it certifies is truly at least 95 % right in at least 9 validation
sets in 10; a smaller validation set certifies fewer images; too small a one, none. The same for
unflagged images (a one-class set): their set threshold is lowered until they are certified."""

from __future__ import annotations

import functools

import numpy as np
import torch

from worker.training.calibration import (
    SURE_CONFIDENCE,
    certified_threshold,
    conformal_threshold,
    error_upper_bound,
    single_class_threshold,
)

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


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 10-class model twice as sure as it should be: its scores, the true class
    probabilities (which the labels are drawn from), and the labels. At the plain 95 %
    conformal threshold its one-class sets are under 95 % right."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * 2.5
    truth = logits.softmax(dim=1)
    labels = torch.multinomial(truth, 1, generator=g).squeeze(1)
    return (logits * 2.0).softmax(dim=1), truth, labels


@functools.cache
def _fresh_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _overconfident(100_000, 10**6)


def _one_class_precision(threshold: float) -> float:
    """How often the model's one-class sets at ``threshold`` are right, in expectation over
    100,000 fresh images (their true probability of being right, not a draw of labels)."""
    scores, truth, _ = _fresh_images()
    single = (scores >= threshold).sum(dim=1) == 1
    predicted = scores.argmax(dim=1)
    return float(truth[torch.arange(len(predicted)), predicted][single].double().mean())


def test_unflagged_images_are_95_percent_right_in_at_least_9_draws_in_10() -> None:
    draws, plain_misses, misses, certified = 60, 0, 0, 0
    for seed in range(draws):
        scores, _, labels = _overconfident(4000, seed)
        conformal = conformal_threshold(scores, labels, 0.95)
        assert conformal is not None
        threshold, ok = single_class_threshold(scores, labels, conformal, TARGET)
        assert threshold <= conformal  # larger sets: the coverage promise still holds
        plain_misses += _one_class_precision(conformal) < TARGET
        if ok:
            certified += 1
            misses += _one_class_precision(threshold) < TARGET
    assert plain_misses > draws // 2, "the plain conformal threshold misses 95 % here"
    assert certified >= draws // 5, f"certified in only {certified} of {draws} draws"
    assert misses <= (1 - SURE_CONFIDENCE) * draws, f"{misses} of {draws} draws missed 95 %"


def test_a_validation_set_too_small_certifies_no_one_class_set() -> None:
    scores, _, labels = _overconfident(60, 0)
    conformal = conformal_threshold(scores, labels, 0.95)
    assert conformal is not None
    assert single_class_threshold(scores, labels, conformal, TARGET) == (conformal, False)
