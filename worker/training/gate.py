"""The promotion gate: a candidate replaces the active model only when it is at least about as
accurate on the same validation images.

Both models are scored on the validation images of the classes they share, each predicting
over its own full class set (a new class that steals predictions from an old one counts
against the candidate, as it would for users). The candidate is promoted when

    candidate accuracy >= active accuracy - gate_margin

or when the active model was never trained on labeled data (a base model), or there is none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contract.reports import GateReport
from worker import model_store
from worker.training.batches import ImageSource, Normalizer
from worker.training.context import RunContext
from worker.training.loop import autocast_context
from worker.training.start import ActiveInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    margin: float
    active_version_id: int | None = None
    active_name: str | None = None
    shared_classes: tuple[str, ...] = ()
    images: int = 0
    candidate_accuracy: float | None = None
    active_accuracy: float | None = None

    def to_dict(self) -> GateReport:
        return GateReport(
            promote=self.promote,
            reason=self.reason,
            margin=self.margin,
            active_version_id=self.active_version_id,
            active_name=self.active_name,
            shared_classes=list(self.shared_classes),
            images=self.images,
            candidate_accuracy=self.candidate_accuracy,
            active_accuracy=self.active_accuracy,
        )


def accuracy_on(
    truth: Sequence[str], predicted: Sequence[str], classes: set[str]
) -> tuple[float, int]:
    """Accuracy over the images whose true class is in ``classes``, and how many there were."""
    pairs = [(t, p) for t, p in zip(truth, predicted, strict=True) if t in classes]
    if not pairs:
        return 0.0, 0
    return sum(t == p for t, p in pairs) / len(pairs), len(pairs)


def decide(
    *,
    margin: float,
    active_version_id: int | None,
    active_name: str | None,
    active_trained: bool,
    shared_classes: Sequence[str] = (),
    candidate_accuracy: float | None = None,
    active_accuracy: float | None = None,
    images: int = 0,
) -> GateVerdict:
    promote, reason = _verdict(
        margin,
        active_version_id,
        active_name,
        active_trained,
        shared_classes,
        candidate_accuracy,
        active_accuracy,
        images,
    )
    return GateVerdict(
        promote=promote,
        reason=reason,
        margin=margin,
        active_version_id=active_version_id,
        active_name=active_name,
        shared_classes=tuple(shared_classes),
        images=images,
        candidate_accuracy=candidate_accuracy,
        active_accuracy=active_accuracy,
    )


def _verdict(
    margin: float,
    active_version_id: int | None,
    active_name: str | None,
    active_trained: bool,
    shared_classes: Sequence[str],
    candidate_accuracy: float | None,
    active_accuracy: float | None,
    images: int,
) -> tuple[bool, str]:
    if active_version_id is None:
        return True, "no active model yet"
    if not active_trained:
        return True, f"the active model {active_name} is an untrained base model"
    if not shared_classes or images == 0 or candidate_accuracy is None or active_accuracy is None:
        return True, f"no validation images of classes shared with {active_name} to compare on"
    comparison = (
        f"candidate {candidate_accuracy:.3f} vs {active_name} {active_accuracy:.3f} "
        f"on {images} validation images of {len(shared_classes)} shared classes "
        f"(margin {margin:g})"
    )
    if candidate_accuracy + 1e-9 >= active_accuracy - margin:
        return True, f"passed the gate: {comparison}"
    return False, f"rejected by the gate: {comparison}"


def judge(ctx: RunContext, truth: Sequence[str], predicted: Sequence[str]) -> GateVerdict:
    """The gate's verdict on the candidate (its ``predicted`` class per validation image,
    against ``truth``) against the active model."""
    active, margin = ctx.active, ctx.settings.gate_margin
    if active is None or not active.trained:
        return decide(
            margin=margin,
            active_version_id=active.id if active else None,
            active_name=active.name if active else None,
            active_trained=False,
        )
    shared = [c for c in ctx.classes if c in set(active.classes)]
    candidate_acc, images = accuracy_on(truth, predicted, set(shared))
    try:
        active_acc = score_active(active, ctx, set(shared))
    except Exception as exc:
        log.exception("could not score the active model %s", active.name)
        return GateVerdict(
            True,
            f"the active model {active.name} could not be evaluated ({exc})",
            margin,
            active.id,
            active.name,
            tuple(shared),
            images,
            candidate_acc,
            None,
        )
    return decide(
        margin=margin,
        active_version_id=active.id,
        active_name=active.name,
        active_trained=True,
        shared_classes=shared,
        candidate_accuracy=candidate_acc if images else None,
        active_accuracy=active_acc,
        images=images,
    )


def score_active(active: ActiveInfo, ctx: RunContext, shared: set[str]) -> float | None:
    """The active model's accuracy on the validation images of the shared classes, each
    image preprocessed as that model's own inference does it."""
    if not shared:
        return None
    s = ctx.settings
    loaded = model_store.load_version(s.models_path, active.id)
    device = ctx.device
    model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
    labels = {i for i, c in enumerate(ctx.classes) if c in shared}
    eval_set = ctx.eval_set
    batches: Any
    if loaded.preprocessing == eval_set.source.prep:
        batches = eval_set.subset(labels)
    else:
        source = ImageSource(loaded.preprocessing, s.max_image_pixels, s.decode_threads)
        samples = [x for x in eval_set.samples if x.label in labels]
        batches = source.batches(samples, ctx.config.batch_size, source.eval_image)
    normalize = Normalizer(loaded.preprocessing, device)
    truth: list[str] = []
    predicted: list[str] = []
    with torch.inference_mode():
        for images, targets in batches:
            with autocast_context(device, ctx.autocast):
                logits = model(normalize(images))
            truth += [ctx.classes[int(t)] for t in targets]
            predicted += [loaded.classes[int(i)] for i in logits.float().argmax(1).cpu()]
    del model, loaded
    accuracy, count = accuracy_on(truth, predicted, shared)
    return accuracy if count else None
