"""What a confidence means, fitted on the validation split of each training run.

- **Temperature scaling** (Guo et al., 2017): one scalar T divides the logits before the
  softmax, chosen to minimise the negative log-likelihood of the validation labels. It
  changes no prediction (the arg-max stays), only how sure each one claims to be; networks
  fine-tuned on small sets are overconfident, so T is usually > 1.
- **Expected calibration error** (15 equal-width bins): the gap between the confidence
  claimed and the accuracy reached, weighted by how many images fall in each bin.
- **Split conformal prediction** (Vovk; Angelopoulos & Bates' tutorial): with scores
  ``1 - p_true`` on the n validation images, the threshold ``q`` is their
  ``ceil((n + 1)(1 - alpha)) / n`` quantile, and the set of classes whose calibrated
  probability is at least ``1 - q`` contains the true class with probability >= 1 - alpha
  (for images exchangeable with the validation ones). A set of one class is a confident
  answer; more than one, or none, is an image a person should check.
- **Per-class precision thresholds**: the lowest confidence above which the images predicted
  as a class were that class with at least the target precision on validation, for classes
  with enough such images.
"""

from __future__ import annotations

import math

import torch

from contract.calibration import Calibration
from contract.reports import CalibrationReport, ReliabilityBin

ECE_BINS = 15
MIN_CLASS_IMAGES = 20  # validation images predicted as a class before it gets a threshold


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of ``labels`` under ``softmax(logits / T)``: a golden
    section search on log T over [1/20, 20] (the NLL is convex in 1/T, so unimodal here)."""
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    low, high = math.log(1 / 20), math.log(20)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return round(math.exp((low + high) / 2), 6)


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    total = 0.0
    for i in range(bins):
        upper = confidence <= edges[i + 1] if i == bins - 1 else confidence < edges[i + 1]
        in_bin = (confidence >= edges[i]) & upper
        if in_bin.any():
            gap = abs(float(confidence[in_bin].double().mean()) - float(correct[in_bin].mean()))
            total += gap * int(in_bin.sum()) / len(labels)
    return round(total, 6)


def reliability(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Per bin: its confidence range, how many images, their mean confidence and accuracy."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    out = []
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        upper = confidence <= high if i == bins - 1 else confidence < high
        in_bin = (confidence >= low) & upper
        n = int(in_bin.sum())
        out.append(
            ReliabilityBin(
                low=low,
                high=high,
                images=n,
                confidence=float(confidence[in_bin].double().mean()) if n else 0.0,
                accuracy=float(correct[in_bin].mean()) if n else 0.0,
            )
        )
    return out


def conformal_threshold(probs: torch.Tensor, labels: torch.Tensor, coverage: float) -> float | None:
    """The probability a class needs to be in the prediction set so that the set holds the
    true class with probability >= ``coverage``; None with too few images to promise it."""
    n = len(labels)
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:
        return None  # e.g. 95 % needs at least 19 validation images
    scores = 1.0 - probs[torch.arange(n), labels.long()].double()
    q = float(scores.sort().values[rank - 1])
    return round(1.0 - q, 6)


def prediction_sets(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean [N, C]: which classes are in each image's set."""
    return probs >= threshold


def class_thresholds(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str], target: float
) -> dict[str, float]:
    """Per class: the lowest confidence at which the validation images predicted as that
    class, from there up, were right at least ``target`` of the time."""
    confidence, predicted = probs.max(dim=1)
    out: dict[str, float] = {}
    for index, name in enumerate(classes):
        mine = predicted == index
        if int(mine.sum()) < MIN_CLASS_IMAGES:
            continue
        conf, order = confidence[mine].sort(descending=True)
        right = (labels[mine][order] == index).double()
        precision = right.cumsum(0) / torch.arange(1, len(right) + 1, dtype=torch.double)
        ok = (precision >= target).nonzero()
        if len(ok):
            # The largest prefix (the lowest threshold) whose precision still meets the target.
            out[name] = round(float(conf[int(ok[-1])]), 6)
    return out


def confidence_histogram(confidence: torch.Tensor, bins: int = 10) -> list[float]:
    """The share of images whose top-1 confidence falls in each of ``bins`` equal bins."""
    if len(confidence) == 0:
        return [0.0] * bins
    index = (confidence.double() * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    return [round(float(c), 6) for c in counts / len(confidence)]


def calibrate(
    logits: torch.Tensor | None,
    labels: torch.Tensor,
    classes: list[str],
    coverage: float,
    target_precision: float,
) -> tuple[Calibration, CalibrationReport]:
    """Fit the calibration of a trained model on its validation logits, and say how it did."""
    if logits is None or len(labels) == 0:
        note = "no validation images: uncalibrated (T = 1, no prediction sets)"
        return Calibration(note=note), CalibrationReport(
            temperature=1.0,
            ece_before=None,
            ece_after=None,
            reliability_before=[],
            reliability_after=[],
            coverage_target=coverage,
            set_threshold=None,
            val_coverage=None,
            val_needs_review=None,
            mean_set_size=None,
            class_thresholds={},
            target_precision=target_precision,
            val_confidence_histogram=[],
            note=note,
        )
    labels = labels.long()
    raw = logits.softmax(dim=1)
    temperature = fit_temperature(logits, labels)
    probs = (logits / temperature).softmax(dim=1)
    threshold = conformal_threshold(probs, labels, coverage)
    sets = prediction_sets(probs, threshold) if threshold is not None else None
    sizes = sets.sum(dim=1) if sets is not None else None
    thresholds = class_thresholds(probs, labels, classes, target_precision)
    notes = [f"temperature {temperature:g} fitted on {len(labels)} validation images"]
    if threshold is None:
        notes.append(f"too few validation images for {coverage:.0%} prediction sets")
    calibration = Calibration(
        temperature=temperature,
        coverage=coverage if threshold is not None else None,
        set_threshold=threshold,
        class_thresholds=thresholds,
        target_precision=target_precision,
        note="; ".join(notes),
    )
    report = CalibrationReport(
        temperature=temperature,
        ece_before=expected_calibration_error(raw, labels),
        ece_after=expected_calibration_error(probs, labels),
        reliability_before=reliability(raw, labels),
        reliability_after=reliability(probs, labels),
        coverage_target=coverage,
        set_threshold=threshold,
        val_coverage=(
            round(float(sets[torch.arange(len(labels)), labels].double().mean()), 6)
            if sets is not None
            else None
        ),
        val_needs_review=round(float((sizes != 1).double().mean()), 6)
        if sizes is not None
        else None,
        mean_set_size=round(float(sizes.double().mean()), 4) if sizes is not None else None,
        class_thresholds=thresholds,
        target_precision=target_precision,
        val_confidence_histogram=confidence_histogram(probs.max(dim=1).values),
        note=calibration.note,
    )
    return calibration, report
