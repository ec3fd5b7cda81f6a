"""The JSON API's shapes (and so its OpenAPI schema at /openapi.json, shown at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from contract.failures import FailureKind
from contract.labeled import MAX_CLASS_NAME
from contract.serving import ServingRecord
from db.runs import RunView
from db.versions import ScoreView

SHA256_PATTERN = "^[0-9a-f]{64}$"


class ErrorOut(BaseModel):
    """Every error the API answers: the reason in words; for a 422, one line per bad field."""

    detail: str
    errors: list[str] | None = Field(default=None, description="422 only: one entry per bad field")


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
    dup_group: int | None = Field(
        default=None,
        description="its group of near-duplicates (the first image's id; "
        "/browse?dup_group=ID shows them all), null: in none",
    )


class ResultPage(BaseModel):
    items: list[ResultItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")


class ResultsPage(ResultPage):
    prev_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for the page before; null: the first page"
    )
    total: int = Field(description="rows matching the filters (counted up to 10,000)")
    total_is_lower_bound: bool = Field(description="true when there are at least `total`")


class ReviewPage(ResultPage):
    remaining: int = Field(description="images waiting for a person, this page included")
    remaining_is_lower_bound: bool = Field(
        description="true when there are at least `remaining` (counting stops at 10,000)"
    )


class Request(BaseModel):
    """A request body: exactly its fields (an unknown one is a typo, refused)."""

    model_config = ConfigDict(extra="forbid")


Sha256Field = Annotated[str, Field(pattern=SHA256_PATTERN, description="an image's sha256")]
EXAMPLE_SHA = "9f2c" * 16


class LabelRequest(Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"sha256": EXAMPLE_SHA, "label": "cat"}]},
    )

    sha256: Sha256Field
    label: str = Field(
        min_length=1, max_length=MAX_CLASS_NAME, description="the class: a folder of labeled/"
    )
    reviewer: str | None = Field(
        default=None, max_length=255, description="who labeled it (kept in its history)"
    )
    new_class: StrictBool = Field(
        default=False,
        description="the label is meant to start a new class; without it a label that is no "
        "known class (GET /api/classes) is refused with the close matches",
    )


class BulkLabelRequest(Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"sha256s": [EXAMPLE_SHA], "label": None}]},
    )

    sha256s: list[Sha256Field] = Field(min_length=1, max_length=500)
    label: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CLASS_NAME,
        description="the class for all of them; null: confirm each image's model label",
    )
    reviewer: str | None = Field(default=None, max_length=255)
    new_class: StrictBool = False


class Refused(BaseModel):
    sha256: str
    detail: str = Field(description="why this one was not labeled")


class BulkLabelOut(BaseModel):
    labeled: int
    refused: list[Refused]
    retrain_run: int | None = Field(description="the run these labels queued, if any")


class ClassOut(BaseModel):
    name: str
    labeled_images: int = Field(description="image files in labeled/<name>/")
    in_model: bool = Field(description="the active model's head has this class")
    key: int | None = Field(
        description="its key on the review page (Shift+1 ... Shift+9, Shift+0 for the tenth)"
    )


class ClassesOut(BaseModel):
    items: list[ClassOut]


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


class LabeledOut(ImageOut):
    """The image after a label, and the training run that label started, if it completed
    RETRAIN_AFTER_LABELS."""

    retrain_run: int | None = Field(default=None, description="the run this label queued")


class LabelCount(BaseModel):
    label: str
    images: int


class LabelCountsOut(BaseModel):
    items: list[LabelCount] = Field(description="the most common first (at most 100)")


class FailureGroup(BaseModel):
    kind: str
    images: int


class FailureGroupsOut(BaseModel):
    items: list[FailureGroup] = Field(description="the most common kind first")


class RetryRequest(Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"kind": "corrupt"}]})

    kind: FailureKind | None = Field(default=None, description="every failed image of this kind")
    sha256s: list[Sha256Field] = Field(
        default_factory=list, max_length=10_000, description="these failed images"
    )


class RetryOut(BaseModel):
    queued: int
    messages: int


class RetrainRequestIn(Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"force": False}]})

    force: StrictBool = Field(
        default=False, description="train even when labeled/ is unchanged since the last run"
    )
    fresh: StrictBool = Field(
        default=False, description="start from the base model, not the active version"
    )


#: A training run as the API shows it: the ledger's own view of it (db.runs), not a copy.
RunOut = RunView


class RunsOut(BaseModel):
    items: list[RunOut] = Field(description="the newest first")


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


#: A version's accuracy on the held-out images of labeled/, as one training run scored it: the
#: ledger's own view of it (db.versions), not a copy.
ScoreOut = ScoreView


class ModelsOut(BaseModel):
    items: list[ModelOut] = Field(description="every version, the newest first")
    held_out: list[ScoreOut] = Field(
        description="each version's latest score on the held-out images (never trained on), "
        "in version order: what the Models page charts"
    )
    held_out_history: list[ScoreOut] = Field(
        description="every score, oldest first: each run scores its candidate and the active "
        "model on the same images"
    )


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


class SuspectOut(BaseModel):
    sha256: str
    path: str = Field(description="the file, under labeled/")
    label: str = Field(description="the label it was given (its class folder)")
    suggested: str | None = Field(description="the class the model would give it instead")
    score: float = Field(
        description="how much the model doubts the label: 1 - the probability it gives the "
        "label, from a head that never trained on this image (higher: more suspect)"
    )
    given_probability: float | None
    split: str = Field(description="train | val | holdout, in the run that scored it")
    run_id: int = Field(description="the training run that scored it")


class SuspectsOut(BaseModel):
    items: list[SuspectOut]
    remaining: int = Field(description="suspects not yet decided, these included")
    run_id: int | None = Field(description="the run whose scores these are (null: none yet)")


class SuspectDecisionIn(Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"decision": "relabel", "new_label": "dog"}]},
    )

    decision: Literal["keep", "relabel", "remove"] = Field(
        description="keep the label, relabel the image (new_label), or remove it from training "
        "(its file moves to <data_dir>/removed/; undo brings it back)"
    )
    new_label: str | None = Field(default=None, min_length=1, max_length=MAX_CLASS_NAME)
    reviewer: str | None = Field(default=None, max_length=255)


class SuspectDecidedOut(BaseModel):
    sha256: str
    decision: str = Field(description="kept | relabeled | removed | undone")
    label: str = Field(description="the label it was given")
    new_label: str | None
    path: str | None = Field(description="where its file is now, under labeled/ (null: out of it)")


class TwinOut(BaseModel):
    sha256: str
    distance: int = Field(description="bits apart of 256 (perceptual hashes)")
    where: str = Field(description="inbox | labeled")
    path: str | None = Field(description="under labeled/, for a labeled twin")
    label: str | None = Field(description="its label, for a labeled twin")


class SimilarOut(BaseModel):
    items: list[TwinOut]
    threshold_bits: int


class NearDuplicatesOut(BaseModel):
    groups: list[list[str]] = Field(description="groups of content hashes, two or more each")
    images: int = Field(description="hashed images compared")
    threshold_bits: int
    threshold: str = Field(description="how the threshold was found on this ledger's images")
    seconds: float
    pending: int = Field(
        0,
        description="hashed images not compared yet: over 50,000 each pass compares a share of "
        "them, and later passes (the web app's background) the rest",
    )
