"""The settings of retraining: when a run starts, how it trains, how a version is judged and
what follows a promotion. A part of :class:`Settings` (``contract.settings``), which reads them
like every other field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from contract.limits import HOUR_S, WEEK_S, YEAR_S

# Sized so that a retrain of 3,000 small images (decode, training, gate, calibration, ONNX int8)
# ends within 5 minutes on 2 cores: docs/performance.md, "Learning from scratch".
BUDGET_DEFAULT_S = 260.0


class RetrainingSettings(BaseModel):
    retrain_interval_s: float | None = Field(
        3600.0,
        ge=60,
        le=YEAR_S,
        description="Beat runs a (skipped-if-unchanged) retrain this often; null = never.",
    )
    retrain_cron: str | None = Field(
        None, description="Crontab for beat instead of the interval, e.g. '0 3 * * *'."
    )
    train_mode: Literal["auto", "full", "frozen"] = Field(
        "auto",
        description="full: every layer; frozen: the head on cached features; auto: frozen then "
        "unfreezing on a CPU from pretrained weights, full otherwise.",
    )
    train_budget_s: float | None = Field(
        BUDGET_DEFAULT_S,
        ge=1,
        le=WEEK_S,
        description="Seconds a run may train (decoding its images included): from random "
        "weights the schedule is sized to end within it; any run stops at its best epoch so "
        "far when the next would not fit. The default keeps a retrain of a few thousand "
        "small images within 5 minutes on 2 cores (docs/performance.md).",
    )
    train_flip: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Mirror training images: auto checks on the data whether a mirror keeps "
        "the class (not for digits or text); on or off decides.",
    )
    train_optimizer: Literal["sgd", "adamw"] = Field("sgd", description="SGD+StepLR, or AdamW.")
    train_lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    train_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    train_step_size: int = Field(7, ge=1, le=10_000, description="StepLR period in epochs.")
    train_gamma: float = Field(0.1, gt=0, le=1, description="StepLR decay.")
    train_epochs: int = Field(10, ge=1, le=10_000, description="Most epochs per run.")
    train_batch_size: int = Field(32, ge=1, le=4096, description="Training batch size.")
    train_patience: int = Field(
        3, ge=1, le=10_000, description="Early stop after this many flat epochs."
    )
    holdout_fraction: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="Labeled images held out for good (by content hash): never trained on, "
        "never used to pick an epoch; every version is scored on them, and the gate compares "
        "candidate and active there.",
    )
    val_fraction: float = Field(
        0.15,
        gt=0,
        lt=0.5,
        description="Labeled images, by content hash, that pick the best epoch and calibrate "
        "the confidences.",
    )
    min_images_per_class: int = Field(
        5, ge=1, le=1_000_000, description="Fewer labeled images in a class: training is refused."
    )
    coverage: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="Conformal target: an image's set of likely classes holds the true one "
        "this often; a set of more or fewer than one class needs review. Sets are made larger "
        "where that is needed for one-class sets to reach TARGET_PRECISION.",
    )
    target_precision: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="Sure images (per-class confidence thresholds) and unflagged ones (a "
        "one-class set) reach this precision, with 90 % confidence where the validation "
        "images can certify it.",
    )
    drift_warn: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Warn when a version's production confidences drift this far (total "
        "variation distance) from its validation ones.",
    )
    gate_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Candidate may be this much less accurate and still be promoted.",
    )
    model_check_interval_s: float = Field(
        2.0, ge=0.1, le=HOUR_S, description="How often workers look for a newly promoted model."
    )
    retrain_after_labels: int = Field(
        50,
        ge=0,
        le=10_000_000,
        description="Human labels that trigger a retrain (0 = never by labels).",
    )
    backfill_below_confidence: float = Field(
        0.9,
        ge=0,
        le=1,
        description="After a promotion, unreviewed rows below this confidence are rescored.",
    )
    backfill_limit: int = Field(
        10_000,
        ge=0,
        le=100_000_000,
        description="Most rows a backfill rescores, least confident first.",
    )

    @field_validator("retrain_cron")
    @classmethod
    def _cron_fields(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("retrain_cron needs 5 fields: minute hour day month weekday")
        return value

    @model_validator(mode="after")
    def _a_split_that_leaves_training_images(self) -> RetrainingSettings:
        if self.holdout_fraction + self.val_fraction >= 0.8:
            raise ValueError("holdout_fraction + val_fraction must leave a fifth to train on")
        return self
