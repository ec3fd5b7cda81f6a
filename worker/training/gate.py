"""The promotion gate: a candidate replaces the active model only when it is at least about as
accurate on the same held-out images, both scored in this run by the same code.

The held-out images (``HOLDOUT_FRACTION`` of labeled/, by content hash: never trained on, never
used to pick an epoch) are where versions are compared; with none yet (a tiny labeled set),
the validation images stand in, and the verdict says so. Both models are scored on the images
of the classes they share, each predicting over its own full class set (a new class that
steals predictions from an old one counts against the candidate, as it would for users), each
with its own preprocessing, in the same precision. The candidate is promoted when

    candidate accuracy >= active accuracy - gate_margin

or when the active model was never trained on labeled data (a base model), or there is none.
Scoring both here, rather than comparing the candidate with a figure the active model got in
its own run, keeps one image's worth of numerical noise from deciding (two runs of one model
on the same 68 images once gave 0.662 and 0.647).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from contract.reports import GateReport
from worker.model import model_store
from worker.model.preprocess import Preprocessing
from worker.training.batches import Batch, EvalSet, ImageSource, Normalizer
from worker.training.context import RunContext
from worker.training.loop import autocast_context
from worker.training.start import ActiveInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One model's answers on an evaluation set (in its iteration order)."""

    truth: list[str]
    predicted: list[str]
    logits: torch.Tensor | None  # the candidate's only: the calibration is checked on them

    def accuracy_on(self, classes: set[str]) -> tuple[float | None, int, int]:
        """(accuracy, correct, images) over the images whose true class is in ``classes``."""
        pairs = [(t, p) for t, p in zip(self.truth, self.predicted, strict=True) if t in classes]
        correct = sum(t == p for t, p in pairs)
        return (correct / len(pairs) if pairs else None), correct, len(pairs)


@dataclass(frozen=True, kw_only=True)
class GateVerdict:
    promote: bool
    reason: str
    margin: float
    on: str  # "held-out" or "validation": the images both were scored on
    active_version_id: int | None = None
    active_name: str | None = None
    shared_classes: tuple[str, ...] = ()
    images: int = 0
    candidate_accuracy: float | None = None
    active_accuracy: float | None = None
    candidate: Scored | None = None  # on all its classes, for the report and calibration
    active_correct: int = 0
    candidate_correct: int = 0

    def accuracy_phrase(self, val_accuracy: float) -> str:
        """How the run's message states the candidate's accuracy: on the held-out images,
        beside the active model's on the same ones, when there are any."""
        if self.on != "held-out" or self.candidate_accuracy is None:
            return f"val accuracy {val_accuracy:.3f}"
        phrase = f"held-out accuracy {self.candidate_accuracy:.3f}"
        if self.active_accuracy is not None:
            phrase += f" vs {self.active_accuracy:.3f} for {self.active_name}"
        return f"{phrase} on {self.images} images"

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
            scored_on=self.on,
        )


def evaluation_set(ctx: RunContext) -> tuple[EvalSet, str]:
    """Where versions are compared: the held-out images, or the validation ones without any."""
    if ctx.holdout_set.samples:
        return ctx.holdout_set, "held-out"
    return ctx.eval_set, "validation"


def judge(ctx: RunContext) -> GateVerdict:
    """Score the candidate and the active model on the same images, and decide."""
    on_set, on = evaluation_set(ctx)
    candidate = score(
        ctx.model, ctx.loaded.preprocessing, ctx.classes, ctx, on_set, keep_logits=True
    )
    margin, active = ctx.settings.gate_margin, ctx.active
    everything = set(ctx.classes)
    own_acc, own_correct, own_images = candidate.accuracy_on(everything)
    if active is None or not active.trained:
        why = (
            "no active model yet"
            if active is None
            else (f"the active model {active.name} is an untrained base model")
        )
        return GateVerdict(
            promote=True,
            reason=why,
            margin=margin,
            on=on,
            active_version_id=active.id if active else None,
            active_name=active.name if active else None,
            images=own_images,
            candidate_accuracy=own_acc,
            candidate=candidate,
            candidate_correct=own_correct,
        )
    shared = [c for c in ctx.classes if c in set(active.classes)]
    cand_acc, cand_correct, images = candidate.accuracy_on(set(shared))
    try:
        theirs = score_active(active, ctx, on_set, set(shared))
    except Exception as exc:
        log.exception("could not score the active model %s", active.name)
        return GateVerdict(
            promote=True,
            reason=f"the active model {active.name} could not be evaluated ({exc})",
            margin=margin,
            on=on,
            active_version_id=active.id,
            active_name=active.name,
            shared_classes=tuple(shared),
            images=images,
            candidate_accuracy=cand_acc,
            candidate=candidate,
            candidate_correct=cand_correct,
        )
    active_acc, active_correct, _ = theirs.accuracy_on(set(shared))
    if not images or cand_acc is None or active_acc is None:
        promote, reason = True, f"no {on} images of classes shared with {active.name} to compare"
    else:
        comparison = (
            f"candidate {cand_acc:.3f} ({cand_correct}/{images}) vs {active.name} "
            f"{active_acc:.3f} ({active_correct}/{images}) on the same {images} {on} images "
            f"of {len(shared)} shared classes (margin {margin:g})"
        )
        promote = cand_acc + 1e-9 >= active_acc - margin
        reason = f"{'passed' if promote else 'rejected by'} the gate: {comparison}"
    return GateVerdict(
        promote=promote,
        reason=reason,
        margin=margin,
        on=on,
        active_version_id=active.id,
        active_name=active.name,
        shared_classes=tuple(shared),
        images=images,
        candidate_accuracy=cand_acc,
        active_accuracy=active_acc,
        candidate=candidate,
        active_correct=active_correct,
        candidate_correct=cand_correct,
    )


def score(
    model: torch.nn.Module,
    prep: Preprocessing,
    model_classes: Sequence[str],
    ctx: RunContext,
    on_set: EvalSet,
    labels: set[int] | None = None,
    keep_logits: bool = False,
) -> Scored:
    """``model``'s answers on ``on_set`` (only the images whose label index is in ``labels``),
    each image preprocessed as that model's own inference does it."""
    s, device = ctx.settings, ctx.device
    batches: Iterable[Batch]
    if prep == on_set.source.prep:
        batches = on_set if labels is None else on_set.subset(labels)
    else:
        source = ImageSource(prep, s.max_image_pixels, s.decode_threads)
        samples = [x for x in on_set.samples if labels is None or x.label in labels]
        batches = source.batches(samples, ctx.config.batch_size, source.eval_image)
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    normalize = Normalizer(prep, device)
    truth: list[str] = []
    predicted: list[str] = []
    kept: list[torch.Tensor] = []
    with torch.inference_mode():
        for images, targets in batches:
            with autocast_context(device, ctx.autocast):
                logits = model(normalize(images)).float()
            truth += [ctx.classes[int(t)] for t in targets]
            predicted += [model_classes[int(i)] for i in logits.argmax(1).cpu()]
            if keep_logits:
                kept.append(logits.cpu())
    return Scored(truth, predicted, torch.cat(kept) if kept else None)


def score_active(active: ActiveInfo, ctx: RunContext, on_set: EvalSet, shared: set[str]) -> Scored:
    """The active model's answers on the images of the shared classes."""
    loaded = model_store.load_version(ctx.settings.models_path, active.id)
    labels = {i for i, c in enumerate(ctx.classes) if c in shared}
    try:
        return score(loaded.model, loaded.preprocessing, loaded.classes, ctx, on_set, labels)
    finally:
        del loaded
