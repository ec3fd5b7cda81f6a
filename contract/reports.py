"""The shapes a training run reports in: the progress events it emits while it runs (the CLI
prints them, the ledger keeps the latest in ``training_runs.progress``) and the report of a
trained version (``model_versions.report`` and ``report.json``). TypedDicts, because both
travel as JSON."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class EpochRecord(TypedDict):
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    best_epoch: NotRequired[int]
    threads: NotRequired[int]  # the trainer's threads in this epoch
    planned_epochs: NotRequired[int]  # what the schedule planned, as of this epoch


class ProgressEvent(TypedDict, total=False):
    """One event: ``event`` says which, the rest is the run's progress so far."""

    event: str  # 'phase' | 'epoch' | 'warning' | 'heartbeat' | 'finished'
    phase: str  # queued, starting, scanning, preparing, features, training, gate, saving, <status>
    heartbeat: str  # ISO time of the last sign of life
    labeled: str  # scanning: the folder
    classes: list[str]  # preparing
    train_images: int
    val_images: int
    mode: str
    feature_passes: int  # features: backbone passes
    compared_with: str  # gate: the active model's name
    epochs: int  # training: the most epochs
    epoch: int  # epoch: the fields of an EpochRecord
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    best_epoch: int
    last_warning: str
    run_id: int | None  # finished: the outcome
    status: str
    message: str
    version_id: int | None
    version_name: str | None


class ConfusionMatrix(TypedDict):
    rows: str
    columns: str
    classes: list[str]
    matrix: list[list[int]]


class GateReport(TypedDict):
    promote: bool
    reason: str
    margin: float
    active_version_id: int | None
    active_name: str | None
    shared_classes: list[str]
    images: int
    candidate_accuracy: float | None
    active_accuracy: float | None
    scored_on: NotRequired[str]  # "held-out" (or "validation" while there are no held-out images)


class HoldoutReport(TypedDict):
    """The candidate on the held-out images (never trained on, never used to pick an epoch)."""

    images: int
    correct: int
    accuracy: float | None
    per_class_accuracy: dict[str, float | None]
    scored_on: str  # "held-out", or "validation" while there are no held-out images


class ReliabilityBin(TypedDict):
    low: float
    high: float
    images: int
    confidence: float  # their mean confidence
    accuracy: float  # the share of them predicted right


class CalibrationReport(TypedDict):
    """How a run's calibration did on its validation split (worker/training/calibration.py)."""

    temperature: float
    ece_before: float | None  # expected calibration error, 15 bins, raw softmax
    ece_after: float | None  # ... with the temperature
    reliability_before: list[ReliabilityBin]
    reliability_after: list[ReliabilityBin]
    coverage_target: float  # COVERAGE
    set_threshold: float | None  # a class is in an image's set when p >= this
    val_coverage: float | None  # the share of validation sets holding the true class
    val_needs_review: float | None  # the share of validation sets that are not one class
    mean_set_size: float | None
    class_thresholds: dict[str, float]  # per class: p >= this reaches target_precision
    target_precision: float
    val_confidence_histogram: list[float]  # calibrated top-1 confidence, 10 bins (drift)
    note: str
    temperature_fitted: NotRequired[float]  # on the validation images
    temperature_kept: NotRequired[bool]  # it lowered the check set's NLL without raising its ECE
    temperature_check: NotRequired[str]  # in words: on what, and what it did
    pooled_classes: NotRequired[list[str]]  # classes "sure" uses the pooled threshold for
    coverage_note: NotRequired[str]  # whether the 95 % promise holds here, and why (not)
    sure_note: NotRequired[str]


class VersionRef(TypedDict):
    id: int
    name: str


class AugmentationReport(TypedDict):
    crops: str  # the crops in words
    mirrored: bool
    why: str  # TRAIN_FLIP, or the mirror check's figures


class RecipeReport(TypedDict):
    """How a run trained (worker.training.recipe.describe, plus the stem and augmentation)."""

    stem: str  # imagenet | small | small-stride2
    stem_reason: str
    augmentation: AugmentationReport | dict[str, Any]  # {} where nothing was decoded
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    schedule: str  # in words
    label_smoothing: float
    weight_average: str | None
    max_epochs: int
    patience: int
    planned_epochs: int | None  # what the budget held (one-cycle), else None
    seconds_per_epoch: list[float]
    precision: NotRequired[str]  # what it trained in, and why (measured on a CPU)
    content_side: NotRequired[int | None]  # px of detail the labeled images carry


class ThreadsReport(TypedDict):
    cores: int
    per_epoch: list[int]  # the trainer's threads in each epoch (or feature pass)
    reasons: list[str]


class LeakReport(TypedDict):
    held_out_left_out: int  # held-out images with a near-twin among the training images
    examples: list[str]  # a few of them (paths under labeled/)
    threshold_bits: int
    threshold: str  # how the threshold was found (imaging.perceptual.calibrated_threshold)


class SuspectsReport(TypedDict):
    method: str
    images: int  # labeled images scored
    doubted: int  # of them, where the model's best guess is another class
    seconds: float


class TrainingReport(TypedDict):
    run_id: int | None
    trigger: str
    arch: str
    classes: list[str]
    accuracy: float
    val_loss: float
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: ConfusionMatrix
    history: list[EpochRecord]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    stopped_by_budget: bool  # TRAIN_BUDGET_S ran out; the best epoch so far is kept
    budget_s: float | None
    images_per_class: dict[str, dict[str, int]]
    train_images: int
    val_images: int
    val_split: str
    skipped_corrupt: int
    corrupt_files: list[dict[str, str]]
    warnings: list[str]
    started_from: str
    head_rows_kept: int
    mode: str  # full | frozen | frozen+unfreeze
    mode_reason: str  # why this mode (TRAIN_MODE=auto decides by hardware and weights)
    input_size: str  # the input size trained and served at, and why
    notes: list[str]
    config: dict[str, Any]
    device: str
    autocast: str
    preprocessing: dict[str, Any]
    duration_s: dict[str, float]
    manifest_sha256: str
    gate: GateReport
    holdout: NotRequired[HoldoutReport]
    # How it trained: the stem and why, the augmentation and why (mirrored or not), the
    # optimizer and schedule (worker.training.recipe.describe).
    recipe: NotRequired[RecipeReport]
    # The trainer's threads: cores, threads per epoch, and the reasons (worker.training.threads).
    threads: NotRequired[ThreadsReport]
    calibration: NotRequired[CalibrationReport]
    # Held-out images left out of the gate's scoring: near-twins of training images.
    leak_guard: NotRequired[LeakReport]
    # The labels the model doubts (worker.training.suspects): how they were found.
    suspects: NotRequired[SuspectsReport]
    created_at: str
    version: NotRequired[VersionRef]
