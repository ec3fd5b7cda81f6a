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
  answer; more than one, or none, is an image a person should check. The threshold is
  lowered where needed for one-class sets to be certified right at least ``target`` of the
  time (:func:`single_class_threshold`): larger sets, fewer and surer unflagged images.
- **Per-class precision thresholds that hold with confidence** ("sure"): the lowest confidence
  above which the images predicted as a class were that class often enough that an upper
  :data:`SURE_CONFIDENCE` confidence bound on their error (Clopper-Pearson) stays within
  ``1 - target``: not the precision seen on a few hundred validation images, which a new set
  misses half the time, but one that holds for at least 9 sets in 10. Thresholds are tried
  from the most confident images down, in a fixed order that stops at the first that fails
  (fixed-sequence testing, as in Learn-then-Test: no correction for trying several), so a
  small validation set certifies fewer images or none: at 95 % it takes at least 45 images
  without an error. Classes that cannot be certified on their own share one threshold
  certified on all the validation predictions together (pooled), where that is possible.

The temperature is kept only where it helps images it was not fitted on: it must lower the
negative log-likelihood of the held-out images without raising their calibration error (with
fewer than :data:`MIN_CHECK_IMAGES` held-out images, by cross-fitting on the validation
images: fitted on one half, checked on the other, both ways); otherwise T = 1, and the report
says why.
"""

from __future__ import annotations

import math

import torch

from contract.calibration import Calibration
from contract.reports import CalibrationReport, ReliabilityBin

ECE_BINS = 15
MIN_CLASS_IMAGES = 20  # validation images predicted as a class before it gets a threshold
#: How surely the "sure" promise holds: for at least this share of validation sets.
SURE_CONFIDENCE = 0.9
MAX_SURE_TESTS = 50  # thresholds tried per class (the fixed sequence's length)
MIN_CHECK_IMAGES = 10  # held-out images to check a temperature on; fewer: cross-fitting
SINGLE_TESTS = 20  # set thresholds tried for the one-class sets' promise (a fixed sequence)


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


def single_class_threshold(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float, target: float
) -> tuple[float, bool]:
    """The set threshold to serve, at most the conformal ``threshold``, and whether the images
    whose set is one class (the unflagged ones) are certified right at least ``target`` of
    the time at it (Clopper-Pearson, :data:`SURE_CONFIDENCE`). Coverage alone does not promise
    that: at 95 % coverage, a trained model's one-class sets were 0.938 right on unseen images
    (docs/training.md). A lower threshold makes larger sets (the coverage promise still holds)
    and leaves fewer, surer images unflagged.

    Up to :data:`SINGLE_TESTS` thresholds, evenly from low to the conformal one, are tested in
    that order, and the last one certified before the first failure is kept: fixed-sequence
    testing, as for the sure thresholds, so no correction for trying several. The sequence
    starts at the lowest threshold with enough one-class sets to certify anything: chosen
    from the probabilities alone, not the labels, it leaves the test valid. Where the first
    test fails, the conformal threshold, and False."""
    delta, alpha = 1 - SURE_CONFIDENCE, 1 - target
    least = math.ceil(math.log(delta) / math.log(1 - alpha))  # one-class sets, none wrong
    right = probs.argmax(dim=1) == labels
    candidates = [threshold * (step + 1) / SINGLE_TESTS for step in range(SINGLE_TESTS)]
    found: float | None = None
    for candidate in candidates:
        single = prediction_sets(probs, candidate).sum(dim=1) == 1
        count = int(single.sum())
        if found is None and count < least:
            continue  # too few to test yet: decided without looking at the labels
        if error_upper_bound(int((~right[single]).sum()), count, delta) > alpha:
            break
        found = round(candidate, 6)
    return (found, True) if found is not None else (threshold, False)


def prediction_sets(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean [N, C]: which classes are in each image's set."""
    return probs >= threshold


def class_thresholds(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str], target: float
) -> tuple[dict[str, float], list[str]]:
    """Per class: the lowest confidence at which the validation images predicted as that
    class, from there up, were right at least ``target`` of the time. Classes with fewer than
    :data:`MIN_CLASS_IMAGES` such images get the threshold fitted on every prediction together
    (pooled), where that reaches ``target``; returns the thresholds and the pooled classes."""
    confidence, predicted = probs.max(dim=1)
    out: dict[str, float] = {}
    few: list[str] = []
    for index, name in enumerate(classes):
        mine = predicted == index
        found = (
            certified_threshold(confidence[mine], labels[mine] == index, target)
            if int(mine.sum()) >= MIN_CLASS_IMAGES
            else None
        )
        if found is None:  # too few to certify on its own: the pooled threshold, if any
            few.append(name)
        else:
            out[name] = found
    pooled: list[str] = []
    if few and len(labels) >= MIN_CLASS_IMAGES:
        shared = certified_threshold(confidence, predicted == labels, target)
        if shared is not None:
            for name in few:
                out[name] = shared
                pooled.append(name)
    return out, pooled


def certified_threshold(
    confidence: torch.Tensor, right: torch.Tensor, target: float
) -> float | None:
    """The lowest confidence whose images, from there up, are certified right at least
    ``target`` of the time with :data:`SURE_CONFIDENCE` (see the module); None if none is."""
    delta, alpha = 1 - SURE_CONFIDENCE, 1 - target
    least = math.ceil(math.log(delta) / math.log(1 - alpha))  # images, none of them wrong
    count = len(right)
    if count < least:
        return None
    conf, order = confidence.sort(descending=True)
    errors = (~right[order].bool()).long().cumsum(0).tolist()
    tests = min(MAX_SURE_TESTS, count - least + 1)
    sizes = sorted({round(least + i * (count - least) / max(1, tests - 1)) for i in range(tests)})
    found = None
    for size in sizes:  # from the most confident down; the first failure ends the sequence
        if error_upper_bound(errors[size - 1], size, delta) > alpha:
            break
        found = round(float(conf[size - 1]), 6)
    return found


def error_upper_bound(errors: int, n: int, delta: float) -> float:
    """Clopper-Pearson: the largest error rate p at which ``errors`` or fewer wrong among ``n``
    still has probability ``delta`` (a one-sided 1 - delta upper confidence bound)."""
    if errors >= n:
        return 1.0
    low, high = errors / n, 1.0
    for _ in range(40):  # bisection to ~1e-12
        middle = (low + high) / 2
        if _binomial_cdf(errors, n, middle) > delta:
            low = middle
        else:
            high = middle
    return high


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0 if k < n else 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    return sum(
        math.exp(base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k + 1)
    )


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def check_temperature(
    temperature: float,
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    check_logits: torch.Tensor | None,
    check_labels: torch.Tensor | None,
) -> tuple[bool, str]:
    """Whether ``temperature`` (fitted on the validation images) helps images it was not
    fitted on, and what was measured, in words."""
    if (
        check_logits is not None
        and check_labels is not None
        and len(check_labels) >= MIN_CHECK_IMAGES
    ):
        before, after = (
            nll(check_logits, check_labels),
            nll(check_logits, check_labels, temperature),
        )
        ece_1 = expected_calibration_error(check_logits.softmax(1), check_labels)
        ece_t = expected_calibration_error((check_logits / temperature).softmax(1), check_labels)
        kept = after < before and ece_t <= ece_1 + 1e-9
        measured = (
            f"on {len(check_labels)} held-out images: NLL {before:.4f} -> {after:.4f}, "
            f"ECE {ece_1:.4f} -> {ece_t:.4f}"
        )
        return kept, measured
    n = len(val_labels)
    if n < 2 * MIN_CHECK_IMAGES:
        return True, f"not checked: {n} validation images, too few to cross-fit"
    halves = [torch.arange(0, n, 2), torch.arange(1, n, 2)]
    before = after = 0.0
    for fit_on, check_on in (halves, halves[::-1]):
        fold_t = fit_temperature(val_logits[fit_on], val_labels[fit_on])
        before += nll(val_logits[check_on], val_labels[check_on])
        after += nll(val_logits[check_on], val_labels[check_on], fold_t)
    kept = after < before
    return kept, (
        f"cross-fitted on the {n} validation images (fewer than {MIN_CHECK_IMAGES} held-out): "
        f"mean NLL {before / 2:.4f} -> {after / 2:.4f}"
    )


def confidence_histogram(confidence: torch.Tensor, bins: int = 10) -> list[float]:
    """The share of images whose top-1 confidence falls in each of ``bins`` equal bins."""
    if len(confidence) == 0:
        return [0.0] * bins
    index = (confidence.double() * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    return [round(float(c), 6) for c in counts / len(confidence)]


def _uncalibrated(
    coverage: float, target_precision: float
) -> tuple[Calibration, CalibrationReport]:
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


def _coverage_note(coverage: float, threshold: float | None, images: int, classes: int) -> str:
    needed = math.ceil(coverage / (1 - coverage))
    if threshold is None:
        return (
            f"coverage not guaranteed: {images} validation images, {needed} needed for "
            f"{coverage:.0%} prediction sets (no image is flagged needs review)"
        )
    return (
        f"{coverage:.0%} prediction sets from {images} validation images "
        f"({needed} needed); per class it is a promise on average, not for each class "
        f"({images / max(1, classes):.0f} validation images per class)"
    )


def _single_note(target: float, conformal: float, threshold: float, certified: bool) -> str:
    if not certified:
        return (
            f"one-class sets not certified {target:.0%} right on these validation images: "
            "an unflagged image is right as often as the sets' coverage allows, no more"
        )
    if threshold < conformal:
        return (
            f"set threshold lowered from {conformal:g} to {threshold:g} so that one-class sets "
            f"are {target:.0%} right with {SURE_CONFIDENCE:.0%} confidence"
        )
    return f"one-class sets certified {target:.0%} right with {SURE_CONFIDENCE:.0%} confidence"


def _sure_note(
    target: float, images: int, classes: list[str], thresholds: dict[str, float], pooled: list[str]
) -> str:
    """On how many images the sure promise rests, and which classes have a threshold."""
    least = math.ceil(math.log(1 - SURE_CONFIDENCE) / math.log(target))
    own = len(thresholds) - len(pooled)
    note = (
        f"sure: at least {target:.0%} right with {SURE_CONFIDENCE:.0%} confidence "
        f"(a Clopper-Pearson bound on {images} validation images; at least {least} per "
        f"threshold); {own} class(es) with their own threshold"
    )
    if pooled:
        note += f", {len(pooled)} with the pooled one"
    if len(thresholds) < len(classes):
        note += (
            f"; {len(classes) - len(thresholds)} without (fewer than {MIN_CLASS_IMAGES} "
            "validation images predicted as them, and too few to pool)"
        )
    return note


def calibrate(
    logits: torch.Tensor | None,
    labels: torch.Tensor,
    classes: list[str],
    coverage: float,
    target_precision: float,
    check_logits: torch.Tensor | None = None,
    check_labels: torch.Tensor | None = None,
) -> tuple[Calibration, CalibrationReport]:
    """Fit the calibration of a trained model on its validation logits, check its temperature
    on the held-out ones (``check_*``), and say how it did."""
    if logits is None or len(labels) == 0:
        return _uncalibrated(coverage, target_precision)
    labels = labels.long()
    raw = logits.softmax(dim=1)
    fitted = fit_temperature(logits, labels)
    kept, measured = check_temperature(fitted, logits, labels, check_logits, check_labels)
    temperature = fitted if kept else 1.0
    temperature_check = (
        f"T {fitted:g} kept: {measured}" if kept else f"T {fitted:g} not kept (T = 1): {measured}"
    )
    probs = (logits / temperature).softmax(dim=1)
    threshold = conformal_threshold(probs, labels, coverage)
    single_note = None
    if threshold is not None:
        conformal = threshold
        threshold, certified = single_class_threshold(probs, labels, conformal, target_precision)
        single_note = _single_note(target_precision, conformal, threshold, certified)
    sets = prediction_sets(probs, threshold) if threshold is not None else None
    sizes = sets.sum(dim=1) if sets is not None else None
    thresholds, pooled = class_thresholds(probs, labels, classes, target_precision)
    coverage_note = _coverage_note(coverage, threshold, len(labels), len(classes))
    sure_note = _sure_note(target_precision, len(labels), classes, thresholds, pooled)
    notes = [temperature_check, coverage_note] + ([single_note] if single_note else [])
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
        temperature_fitted=fitted,
        temperature_kept=kept,
        temperature_check=temperature_check,
        pooled_classes=pooled,
        coverage_note=coverage_note,
        sure_note=sure_note,
    )
    return calibration, report
