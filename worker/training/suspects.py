"""Labels the model doubts: after each run, a probability for every labeled image from a model
that never saw that image's label, and the labeled images ranked by how little of it goes to
the label they were given (confident learning's self-confidence ranking; Northcutt et al.,
"Confident Learning", 2021, written here: cleanlab is AGPL).

How "never saw" is had cheaply: the run's network (its final weights) turns every labeled
image into features once (the layer before the head), and a linear head is cross-fitted on
them: five folds, each image's probabilities from the head fitted on the other four. A whole
network per fold would cost five trainings; the linear heads cost a second. The features
come from a network that trained on the training images' labels, wrong ones included, so a
mislabeled training image sits nearer its given class than it would in a network that never
saw it; the cross-fitted head still doubts most of them (bench.mistakes measures how many).
Validation and held-out images were never trained on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn

from contract.labeled import LabeledSeen
from contract.reports import SuspectsReport
from worker.training.batches import Batch, EvalSet, Normalizer
from worker.training.context import RunContext
from worker.training.dataset import Sample
from worker.training.features import headless
from worker.training.loop import autocast_context

FOLDS = 5
#: L2 weight of the cross-fitted heads, on standardised features.
DECAY = 1e-2
STEPS = 100


def score_labels(ctx: RunContext) -> tuple[list[LabeledSeen], SuspectsReport]:
    """Every labeled image of the run with its split, hash and suspicion score."""
    started = time.perf_counter()
    model, device = ctx.model, ctx.device
    splits: list[tuple[str, list[Sample], Iterable[Batch]]] = []
    size = ctx.config.batch_size
    train = EvalSet(ctx.source, ctx.labeled.train, size)
    splits.append(("train", train.samples, train))
    splits.append(("val", ctx.eval_set.samples, ctx.eval_set))
    holdout = EvalSet(ctx.source, ctx.labeled.holdout, size)
    splits.append(("holdout", holdout.samples, holdout))
    normalize = Normalizer(ctx.source.prep, device)
    model.to(device).eval()
    chunks: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    try:
        with torch.no_grad(), headless(model), autocast_context(device, ctx.autocast):
            for _, _, batches in splits:
                for images, labels in batches:
                    chunks.append(model(normalize(images)).float().flatten(1).cpu())
                    targets.append(labels)
    finally:
        model.cpu()
    samples = [(split, s) for split, kept, _ in splits for s in kept]
    features, given = torch.cat(chunks), torch.cat(targets).long()
    if len(samples) != len(given):  # an image failed to decode in one pass, not the other
        raise RuntimeError(f"{len(samples)} labeled images but {len(given)} features")
    probabilities = cross_fitted(features, given, len(ctx.classes))
    scores, suggested = suspicion(probabilities, given)
    rows = [
        LabeledSeen(
            sha256=sample.sha256,
            path=sample.rel,
            label=ctx.classes[sample.label],
            split=split,
            phash=ctx.labeled.hashes.get(sample.sha256),
            suggested=ctx.classes[int(suggested[i])],
            given_probability=round(float(probabilities[i, given[i]]), 6),
            score=round(float(scores[i]), 6),
        )
        for i, (split, sample) in enumerate(samples)
    ]
    report = SuspectsReport(
        method=(
            f"{FOLDS}-fold cross-fitted linear heads on the run's features; score = 1 - the "
            "probability of the given label"
        ),
        images=len(rows),
        doubted=int((probabilities.argmax(dim=1) != given).sum()),
        seconds=round(time.perf_counter() - started, 2),
    )
    return rows, report


def cross_fitted(
    features: torch.Tensor, labels: torch.Tensor, classes: int, folds: int = FOLDS, seed: int = 0
) -> torch.Tensor:
    """Each row's class probabilities from a multinomial logistic regression fitted on the
    other folds (standardised features, L2 :data:`DECAY`), as an (N, classes) tensor."""
    count = len(labels)
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(count, dtype=torch.long)
    fold_of[torch.randperm(count, generator=generator)] = torch.arange(count) % max(2, folds)
    out = torch.full((count, classes), 1.0 / classes)
    for fold in range(max(2, folds)):
        held = fold_of == fold
        if not held.any() or held.all():
            continue
        fitted = fold_of != fold
        mean = features[fitted].mean(dim=0)
        std = features[fitted].std(dim=0).clamp_min(1e-6)
        head = _fit_head((features[fitted] - mean) / std, labels[fitted], classes)
        with torch.no_grad():
            out[held] = head((features[held] - mean) / std).softmax(dim=1)
    return out


def _fit_head(x: torch.Tensor, y: torch.Tensor, classes: int) -> nn.Linear:
    head = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=STEPS, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y) + DECAY / 2 * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def suspicion(
    probabilities: torch.Tensor, given: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the score (1 - the probability of the given label) and the class the model
    would give instead (its most probable other class)."""
    rows = torch.arange(len(given))
    score = 1 - probabilities[rows, given]
    others = probabilities.clone()
    others[rows, given] = -1.0
    return score, others.argmax(dim=1)
