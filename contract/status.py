"""What the ledger says of the whole system, as ``status``, ``/api/status`` and the Overview
page show it: images per status, the active model, and the recent classification rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from contract.serving import ServingRecord


@dataclass(frozen=True)
class ActiveModel:
    id: int
    name: str
    arch: str
    classes: int  # how many classes it knows
    val_accuracy: float | None
    serving: ServingRecord | None


@dataclass(frozen=True)
class LedgerStatus:
    images: dict[str, int]  # per status, every status present
    active_model: ActiveModel | None
    images_per_second: float  # classified over the window asked for

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.active_model is not None and self.active_model.serving is not None:
            data["active_model"]["serving"] = self.active_model.serving.to_dict()
        return data
