"""The promotion gate: a candidate replaces the active model only when it is at least about as
accurate on the same validation images.

Both models are scored on the validation images of the classes they share, each predicting
over its own full class set (a new class that steals predictions from an old one counts
against the candidate, as it would for users). The candidate is promoted when

    candidate accuracy >= active accuracy - gate_margin

or when the active model was never trained on labeled data (a base model), or there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    margin: float
    active_version_id: int | None = None
    active_name: str | None = None
    shared_classes: tuple[str, ...] = ()
    images: int = 0
    candidate_accuracy: float | None = None
    active_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shared_classes"] = list(self.shared_classes)
        return data


def accuracy_on(
    truth: Sequence[str], predicted: Sequence[str], classes: set[str]
) -> tuple[float, int]:
    """Accuracy over the images whose true class is in ``classes``, and how many there were."""
    pairs = [(t, p) for t, p in zip(truth, predicted, strict=True) if t in classes]
    if not pairs:
        return 0.0, 0
    return sum(t == p for t, p in pairs) / len(pairs), len(pairs)


def decide(
    *,
    margin: float,
    active_version_id: int | None,
    active_name: str | None,
    active_trained: bool,
    shared_classes: Sequence[str] = (),
    candidate_accuracy: float | None = None,
    active_accuracy: float | None = None,
    images: int = 0,
) -> GateVerdict:
    promote, reason = _verdict(
        margin,
        active_version_id,
        active_name,
        active_trained,
        shared_classes,
        candidate_accuracy,
        active_accuracy,
        images,
    )
    return GateVerdict(
        promote=promote,
        reason=reason,
        margin=margin,
        active_version_id=active_version_id,
        active_name=active_name,
        shared_classes=tuple(shared_classes),
        images=images,
        candidate_accuracy=candidate_accuracy,
        active_accuracy=active_accuracy,
    )


def _verdict(
    margin: float,
    active_version_id: int | None,
    active_name: str | None,
    active_trained: bool,
    shared_classes: Sequence[str],
    candidate_accuracy: float | None,
    active_accuracy: float | None,
    images: int,
) -> tuple[bool, str]:
    if active_version_id is None:
        return True, "no active model yet"
    if not active_trained:
        return True, f"the active model {active_name} is an untrained base model"
    if not shared_classes or images == 0 or candidate_accuracy is None or active_accuracy is None:
        return True, f"no validation images of classes shared with {active_name} to compare on"
    comparison = (
        f"candidate {candidate_accuracy:.3f} vs {active_name} {active_accuracy:.3f} "
        f"on {images} validation images of {len(shared_classes)} shared classes "
        f"(margin {margin:g})"
    )
    if candidate_accuracy + 1e-9 >= active_accuracy - margin:
        return True, f"passed the gate: {comparison}"
    return False, f"rejected by the gate: {comparison}"
