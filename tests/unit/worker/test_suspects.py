"""The suspect-label ranking on features with a known truth: labels flipped at random are
found near the top, and what is suggested instead is mostly the true class."""

from __future__ import annotations

import torch

from worker.training.suspects import cross_fitted, suspicion


def _clusters(
    classes: int, per_class: int, dims: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dims, generator=generator) * 2.0
    truth = torch.arange(classes).repeat_interleave(per_class)
    features = centres[truth] + torch.randn(len(truth), dims, generator=generator) * 1.5
    return features, truth


def test_flipped_labels_rank_near_the_top() -> None:
    features, truth = _clusters(classes=10, per_class=100, dims=32, seed=0)
    generator = torch.Generator().manual_seed(1)
    flipped = torch.randperm(len(truth), generator=generator)[:80]  # 8 %
    given = truth.clone()
    given[flipped] = (truth[flipped] + torch.randint(1, 10, (80,), generator=generator)) % 10
    probabilities = cross_fitted(features, given, 10)
    scores, suggested = suspicion(probabilities, given)
    top = set(scores.argsort(descending=True)[:80].tolist())
    found = len(top & set(flipped.tolist()))
    assert found >= 60, found  # at least 3 in 4 of the flipped ones in the top 80
    assert (suggested[flipped] == truth[flipped]).float().mean() >= 0.8


def test_each_probability_comes_from_a_head_that_did_not_see_that_label() -> None:
    """Out of fold: a label no other image shares cannot be learned, so the image gets no
    more than chance for it, where an in-sample fit would give it near certainty."""
    features, truth = _clusters(classes=3, per_class=40, dims=8, seed=2)
    given = truth.clone()
    given[0] = 3  # a class only this image has
    probabilities = cross_fitted(features, given, 4)
    assert probabilities[0, 3] < 0.3
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(given)), atol=1e-5)
