"""A model version's calibration: what its confidences mean. Fitted by each training run on its
validation split (worker/training/calibration.py), stored in the version's checkpoint and its
ledger row, applied by the workers to every confidence they write."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Calibration:
    """What travels with a model version (its checkpoint and its ledger row)."""

    temperature: float = 1.0
    coverage: float | None = None  # the conformal target, 1 - alpha
    set_threshold: float | None = None  # a class is in the set when p >= this
    class_thresholds: dict[str, float] = field(default_factory=dict)
    target_precision: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """Read what :meth:`to_dict` wrote; a version without one (a base model, or trained
        before calibration existed) is uncalibrated: T = 1, no sets, no thresholds."""
        if not data:
            return cls(note="uncalibrated: no validation set was fitted")
        return cls(
            temperature=float(data.get("temperature", 1.0)),
            coverage=_number(data.get("coverage")),
            set_threshold=_number(data.get("set_threshold")),
            class_thresholds={
                str(k): float(v) for k, v in dict(data.get("class_thresholds") or {}).items()
            },
            target_precision=_number(data.get("target_precision")),
            note=str(data.get("note", "")),
        )

    @property
    def calibrated(self) -> bool:
        return self.set_threshold is not None or self.temperature != 1.0


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
