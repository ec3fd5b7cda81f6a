"""A version's ONNX Runtime artifacts and how the workers serve it, as typed records:

- :class:`ServingManifest`: ``models/<id>/serving/serving.json``, written by whoever built the
  artifacts (a training run, or the first worker that served the version), read by every
  worker before it trusts the files;
- :class:`ServingRecord`: what ``model_versions.serving`` holds, which ``status``, ``models
  --long`` and the Models page show: the artifacts' checks, and which backend a worker last
  served the version with, and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Artifact:
    file: str  # in the version's serving/ folder
    sha256: str
    max_abs_diff: float | None = None  # fp32 only: the export against torch, on the logits


@dataclass(frozen=True)
class Int8Check:
    """int8 against fp32 on images the calibration did not see."""

    images: int
    agreement: float  # share of images with the same top-1 class
    max_confidence_diff: float  # largest |p_int8 - p_fp32| of the top-1 class (temperature applied)
    fp32_accuracy: float | None  # where labels are known (the validation split)
    int8_accuracy: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class ServingManifest:
    weights_sha256: str  # the model.pt these were built from
    built_from: str  # in words: "128 validation images", "the first 256 images it classified"
    fp32: Artifact
    int8: Artifact | None = None  # None: not built, or refused by its check
    int8_check: Int8Check | None = None
    int8_reason: str | None = None  # why there is no int8, in words
    build_seconds: float | None = None
    onnxruntime: str | None = None
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingManifest:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for a manifest of another
        shape; the caller refuses the artifacts then."""
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        check = data.get("int8_check")
        return cls(
            weights_sha256=str(data["weights_sha256"]),
            built_from=str(data.get("built_from") or ""),
            fp32=Artifact(**data["fp32"]),
            int8=Artifact(**data["int8"]) if data.get("int8") else None,
            int8_check=Int8Check(**check) if check else None,
            int8_reason=data.get("int8_reason"),
            build_seconds=data.get("build_seconds"),
            onnxruntime=data.get("onnxruntime"),
        )

    def preferred(self, backend: str = "auto") -> tuple[Artifact, str]:
        """The artifact that serves under ``INFERENCE_BACKEND`` ``backend``, and its precision:
        int8 where its check kept it (and the backend allows it), else fp32."""
        if self.int8 is not None and backend != "onnxruntime-fp32":
            return self.int8, "int8"
        return self.fp32, "fp32"


@dataclass(frozen=True)
class ServingRecord:
    """``model_versions.serving``: every field optional, filled as it becomes known (a run or a
    worker records the artifacts' checks, a worker records which backend serves and why)."""

    backend: str | None = None  # "onnxruntime" once artifacts exist
    precision: str | None = None  # of the artifact that serves: "int8" or "fp32"
    int8_agreement: float | None = None
    int8_check_images: int | None = None
    int8_max_confidence_diff: float | None = None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    int8_reason: str | None = None
    export_max_abs_diff: float | None = None
    built_from: str | None = None
    build_seconds: float | None = None
    serves: str | None = None  # what a worker last served it with, e.g. "onnxruntime int8"
    why: str | None = None

    @classmethod
    def of(cls, manifest: ServingManifest, backend: str) -> ServingRecord:
        check = manifest.int8_check
        return cls(
            backend="onnxruntime",
            precision=manifest.preferred(backend)[1],
            int8_agreement=check.agreement if check else None,
            int8_check_images=check.images if check else None,
            int8_max_confidence_diff=check.max_confidence_diff if check else None,
            fp32_accuracy=check.fp32_accuracy if check else None,
            int8_accuracy=check.int8_accuracy if check else None,
            int8_reason=manifest.int8_reason or (check.reason if check else None),
            export_max_abs_diff=manifest.fp32.max_abs_diff,
            built_from=manifest.built_from,
            build_seconds=manifest.build_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """What is stored: the fields that are known."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServingRecord | None:
        if not data:
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def merged(self, newer: ServingRecord) -> ServingRecord:
        """This record with what ``newer`` knows on top."""
        return replace(self, **newer.to_dict())


def describe_serving(serving: ServingRecord | None) -> str:
    """How a version is served, in words (``status``, ``models --long``, the Models page)."""
    if serving is None:
        return "no worker has served it yet"
    serves, why = serving.serves, serving.why
    if serves is None:  # built by the training run; no worker has loaded it yet
        serves = f"onnxruntime {serving.precision or 'fp32'} (when a CPU worker loads it)"
        why = serving.int8_reason
    text = f"{serves} ({why})" if why else str(serves)
    diff = serving.int8_max_confidence_diff
    if "int8" in str(serves) and diff is not None:
        text += f"; confidences within {diff:.4f} of fp32"
    return text
