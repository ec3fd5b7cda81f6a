"""Typed SQLAlchemy 2 models. One row per image *content* (sha256); paths, predictions and
model versions hang off it. Documented for plain-SQL users in docs/operations.md ("The schema")."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from contract.clock import utcnow
from contract.states import ImageStatus, ModelStatus, RunStatus

__all__ = ["ImageStatus", "ModelStatus", "RunStatus"]  # re-exported: the ledger's states


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "base:resnet18:imagenet" for an untrained base model, "v<id>" style for trained ones.
    name: Mapped[str] = mapped_column(String(255), unique=True)
    arch: Mapped[str] = mapped_column(String(64))
    weights: Mapped[str] = mapped_column(Text)  # 'imagenet' | 'none' | path to the weights file
    classes: Mapped[list[Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    trained: Mapped[bool] = mapped_column(default=False)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    per_class_accuracy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    # contract.calibration.Calibration: temperature, conformal threshold, class thresholds.
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # How CPU workers serve it (worker.model.onnx_backend's manifest summary): backend, precision,
    # the int8 agreement check. NULL until its ONNX artifacts are built.
    serving: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)  # why promoted / rejected
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LabelSource(StrEnum):
    MODEL = "model"
    HUMAN = "human"


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        # Every index here is written on a classified image's update (an image row is written
        # three times: recorded, sent, classified), so each earns its place; a reader that
        # wants only some rows gets a partial index. Nothing indexes enqueued_at, so marking a
        # row sent can be a heap-only update in PostgreSQL, given room on its page
        # (fillfactor below). docs/performance.md, "The ledger's writes".
        # The web app's keyset pages (docs/web.md): each filter or sort a page
        # offers has an index that serves it in order, so a page never scans the table.
        Index("ix_images_status_id", "status", "id"),
        Index("ix_images_confidence_id", "confidence", "id"),
        Index("ix_images_effective_label_id", text("coalesce(human_label, label)"), "id"),
        Index(
            "ix_images_effective_label_confidence",
            text("coalesce(human_label, label)"),
            "confidence",
            "id",
        ),
        # The review queue: unreviewed results, the ones a person should see first first.
        Index(
            "ix_images_review",
            "review_score",
            "id",
            sqlite_where=text("status = 'done' AND human_label IS NULL"),
            postgresql_where=text("status = 'done' AND human_label IS NULL"),
        ),
        Index(
            "ix_images_failed_kind",
            "error_kind",
            "id",
            sqlite_where=text("status = 'failed'"),
            postgresql_where=text("status = 'failed'"),
        ),
        Index(
            "ix_images_dup_group_id",
            "dup_group",
            "id",
            sqlite_where=text("dup_group IS NOT NULL"),
            postgresql_where=text("dup_group IS NOT NULL"),
        ),
        {"postgresql_with": {"fillfactor": 50}},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)  # why it failed, in words
    # ... and as a contract.failures.FailureKind, which is what the code decides by.
    error_kind: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The current result (the latest prediction), denormalised for plain-SQL queries.
    label: Mapped[str | None] = mapped_column(String(255))
    confidence: Mapped[float | None] = mapped_column(Float)
    topk: Mapped[list[Any] | None] = mapped_column(JSON)
    # top-1 minus top-2 probability: how sure the model is between its two best guesses.
    margin: Mapped[float | None] = mapped_column(Float)
    # The version's conformal prediction set is not a single class (None: uncalibrated).
    needs_review: Mapped[bool | None] = mapped_column()
    # At or above its class's target-precision threshold (None: the class has none).
    sure: Mapped[bool | None] = mapped_column()
    # The review queue's order (db.ledger.review_score): needs_review first, then by margin.
    review_score: Mapped[float | None] = mapped_column(Float)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    # A person's label (the current one of its `labels` history), which wins over the model's.
    human_label: Mapped[str | None] = mapped_column(String(255))
    labeled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    classified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The 256-bit perceptual hash (imaging.perceptual) of its pixels, for near-duplicates.
    phash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # The id of the first image of its near-duplicate group, as the last grouping pass found
    # it (pipeline.near_duplicates); None: in no group.
    dup_group: Mapped[int | None] = mapped_column(Integer)

    paths: Mapped[list[ImagePath]] = relationship(back_populates="image", lazy="selectin")
    model_version: Mapped[ModelVersion | None] = relationship(lazy="joined")


class ImagePath(Base):
    """Every path an image's content was seen at (the same bytes under two names: two rows)."""

    __tablename__ = "image_paths"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="paths")


class Prediction(Base):
    """History: one row per (image, model version). Older versions' results stay."""

    __tablename__ = "predictions"
    # The unique constraint's index, led by image_id, also serves lookups by image.
    __table_args__ = (UniqueConstraint("image_id", "model_version_id", name="uq_prediction"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    label: Mapped[str] = mapped_column(String(255))
    confidence: Mapped[float] = mapped_column(Float)
    topk: Mapped[list[Any]] = mapped_column(JSON)
    # Indexed for the Overview's work per minute (the last hour of predictions).
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class Label(Base):
    """History of human labels: one row per labeling act; the current one has no
    ``undone_at`` and no later row (it is mirrored in ``images.human_label``)."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_created", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16), default=LabelSource.HUMAN)
    reviewer: Mapped[str | None] = mapped_column(String(255))
    # What the model said when the person labeled it (for the correction rate per class).
    model_label: Mapped[str | None] = mapped_column(String(255))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Where the training copy was written (labeled/<class>/<sha256>.<ext>), to undo it.
    file: Mapped[str | None] = mapped_column(Text)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING, index=True)
    trigger: Mapped[str] = mapped_column(String(32))  # 'schedule' | 'manual'
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Asked to stop (retrain --cancel); the run's worker ends it as cancelled.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class VersionScore(Base):
    """A version's accuracy on the held-out images of labeled/ as one training run scored it
    (the candidate and the active model, side by side): what the Models page charts."""

    __tablename__ = "version_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    images: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabeledImage(Base):
    """One labeled image as a training run saw it: where it was, its label and split, its
    perceptual hash, and (after the run) how much a model that never trained on it doubts
    the label (``score``, higher is more suspect) and what it suggests instead."""

    __tablename__ = "labeled_images"
    __table_args__ = (Index("ix_labeled_images_run_score", "run_id", "score"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)  # relative to labeled/
    label: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(8))  # train | val | holdout
    phash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    suggested: Mapped[str | None] = mapped_column(String(255))
    given_probability: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)


class SuspectDecision(Base):
    """A person's decision on a suspect label: kept, relabeled or removed from training; the
    current one has no ``undone_at``. ``moved_from``/``moved_to`` (relative to the data dir)
    say where its file went, to undo it."""

    __tablename__ = "suspect_decisions"
    __table_args__ = (Index("ix_suspect_decisions_sha256_label", "sha256", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(255))
    decision: Mapped[str] = mapped_column(String(16))  # kept | relabeled | removed
    new_label: Mapped[str | None] = mapped_column(String(255))
    moved_from: Mapped[str | None] = mapped_column(Text)
    moved_to: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
