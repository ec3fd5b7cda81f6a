"""The JSON API's shapes (and so its OpenAPI schema at /openapi.json, shown at /docs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from contract.failures import FailureKind
from contract.labeled import MAX_CLASS_NAME
from contract.serving import ServingRecord
from db.runs import RunView

SHA256_PATTERN = "^[0-9a-f]{64}$"


class ErrorOut(BaseModel):
    """Every error the API answers: the reason in words; for a 422, one line per bad field."""

    detail: str
    errors: list[str] | None = Field(
        default=None, description="422 only: one entry per bad field"
    )


class ActiveModelOut(BaseModel):
    id: int
    name: str
    arch: str
    classes: int = Field(description="how many classes the model knows")
    val_accuracy: float | None
    serving: ServingRecord | None


class StatusOut(BaseModel):
    """What ``inbox-classifier status --json`` prints, plus the review backlog."""

    images: dict[str, int] = Field(description="images per status: queued, done, failed")
    active_model: ActiveModelOut | None
    images_per_second: float = Field(description="classified over the last `window` seconds")
    queue_depth: dict[str, int] | None = Field(
        description="messages waiting per queue; null: Redis unreachable"
    )
    workers: list[str] | None = Field(description="workers that answered a ping")
    review_backlog: int
    review_backlog_is_lower_bound: bool


class LabelScore(BaseModel):
    label: str
    confidence: float


class ResultItem(BaseModel):
    """One (image, path), as ``inbox-classifier results --format json`` prints it."""

    path: str
    sha256: str
    status: str = Field(description="queued | done | failed")
    label: str | None = Field(description="a person's label where there is one, else the model's")
    label_source: str | None = Field(description="human | model (null while queued or failed)")
    model_label: str | None = Field(description="the model's top label")
    confidence: float | None = Field(description="the model's confidence in model_label")
    topk: list[LabelScore]
    model_version: str | None
    error: str | None
    error_kind: str | None
    classified_at: str | None
    needs_review: bool | None = Field(
        default=None,
        description="the model's set of likely classes (COVERAGE) is not one class: a person "
        "should check it (null: the version is not calibrated)",
    )
    sure: bool | None = Field(
        default=None,
        description="confidence at or above its class's TARGET_PRECISION threshold "
        "(null: the class has none)",
    )


class ResultPage(BaseModel):
    items: list[ResultItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")


class ReviewPage(ResultPage):
    remaining: int = Field(description="images waiting for a person, this page included")
    remaining_is_lower_bound: bool = Field(
        description="true when there are at least `remaining` (counting stops at 10,000)"
    )


class Request(BaseModel):
    """A request body: exactly its fields (an unknown one is a typo, refused)."""

    model_config = ConfigDict(extra="forbid")


class LabelRequest(Request):
    sha256: str = Field(pattern=SHA256_PATTERN)
    label: str = Field(min_length=1, max_length=MAX_CLASS_NAME)
    reviewer: str | None = Field(default=None, max_length=255)


class SeenAtOut(BaseModel):
    path: str
    first_seen_at: str | None
    last_seen_at: str | None


class PredictionOut(BaseModel):
    model_version: str
    model_version_id: int
    label: str
    confidence: float
    topk: list[LabelScore]
    created_at: str | None


class LabelActOut(BaseModel):
    label: str
    source: str
    reviewer: str | None
    model_label: str | None
    created_at: str | None
    undone_at: str | None


class ImageOut(ResultItem):
    size: int
    margin: float | None
    paths: list[SeenAtOut]
    predictions: list[PredictionOut]
    labels: list[LabelActOut]


class LabelCount(BaseModel):
    label: str
    images: int


class FailureGroup(BaseModel):
    kind: str
    images: int


class RetryRequest(Request):
    kind: FailureKind | None = Field(default=None, description="every failed image of this kind")
    sha256s: list[Annotated[str, Field(pattern=SHA256_PATTERN)]] = Field(
        default_factory=list, max_length=10_000
    )


class RetryOut(BaseModel):
    queued: int
    messages: int


class RetrainRequestIn(Request):
    force: StrictBool = False  # true or false, not 0 or "yes"
    fresh: StrictBool = False


#: A training run as the API shows it: the ledger's own view of it (db.runs), not a copy.
RunOut = RunView


class ModelOut(BaseModel):
    id: int
    calibration: dict[str, Any] | None = None
    serving: ServingRecord | None = None
    serving_text: str | None = None
    name: str
    arch: str
    status: str
    trained: bool
    classes: list[str]
    val_accuracy: float | None
    per_class_accuracy: dict[str, float | None] | None
    reason: str | None
    created_at: str | None
    activated_at: str | None
    has_curves: bool


class ModelDetailOut(ModelOut):
    report: dict[str, Any] | None


class SwitchOut(BaseModel):
    active: str
    previous: str


class CorrectionOut(BaseModel):
    labeled: int
    corrected: int
    rate: float


class QualityOut(BaseModel):
    version_id: int
    name: str
    predictions: int
    confidence_histogram: list[float]
    validation_histogram: list[float]
    confidence_drift: float | None = Field(description="total variation distance, 0-1")
    needs_review_share: float | None
    validation_needs_review: float | None
    class_mix: dict[str, float]
    training_mix: dict[str, float]
    class_mix_drift: float | None
    corrections: dict[str, CorrectionOut]
    drift_warn: float
    drifted: bool
