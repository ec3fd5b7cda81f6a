"""Frozen-backbone training: run the backbone ONCE over the labeled images, keep the pooled
features, and train only the head on them. The backbone is in eval mode (BatchNorm statistics
stay as they were, dropout off) on the inference preprocessing, so the features are exactly
what the head will see at inference. Optional augmented passes add RandomResizedCrop/flip
variants of the training images, one backbone pass each.

Each epoch then costs a few matrix multiplies instead of a backbone forward per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from worker.model.modelzoo import head_name
from worker.training.batches import Batch, Normalizer
from worker.training.loop import BatchIterable, autocast_context


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def get_head(model: nn.Module) -> nn.Linear:
    head = model.get_submodule(head_name(model))
    assert isinstance(head, nn.Linear)
    return head


def set_head(model: nn.Module, head: nn.Linear) -> None:
    parent, child = _parent(model, head_name(model))
    setattr(parent, child, head)


@contextmanager
def headless(model: nn.Module) -> Iterator[nn.Linear]:
    """``model`` with its final Linear replaced by Identity (it outputs the head's input);
    yields the head, and puts it back afterwards."""
    name = head_name(model)
    parent, child = _parent(model, name)
    head = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    try:
        yield head
    finally:
        setattr(parent, child, head)


def remap_head(model: nn.Module, old_classes: list[str], new_classes: list[str]) -> int:
    """Give ``model`` a new head for ``new_classes`` that keeps the old head's row (weights and
    bias) of every class it already knew, matched by name. Returns how many rows were kept."""
    old = get_head(model)
    new = nn.Linear(old.in_features, len(new_classes), bias=old.bias is not None)
    where = {c: i for i, c in enumerate(old_classes)}
    kept = 0
    with torch.no_grad():
        for j, name in enumerate(new_classes):
            i = where.get(name)
            if i is None or i >= old.out_features:
                continue
            new.weight[j] = old.weight[i]
            if new.bias is not None and old.bias is not None:
                new.bias[j] = old.bias[i]
            kept += 1
    set_head(model, new.to(old.weight.device))
    return kept


def extract(
    backbone: nn.Module,
    batches: BatchIterable,
    normalize: Normalizer,
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, D] on the CPU, labels [N]) for every image of ``batches``."""
    backbone.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.inference_mode():
        for images, targets in batches:
            with autocast_context(normalize.device, autocast):
                out = backbone(normalize(images))
            feats.append(out.float().flatten(1).cpu())
            labels.append(targets)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


@dataclass
class FeatureSet:
    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> list[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return [
            (self.features[idx], self.labels[idx])
            for idx in (order[i : i + batch_size] for i in range(0, n, batch_size))
        ]
