"""The filters of a results listing, declared once: the API's query parameters
(``GET /api/results``), the Browse page's form and ``inbox-classifier results``' options are all
made from :class:`ResultFilters`, so the three cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.clock import parse_since
from contract.states import ImageStatus


class ResultFilters(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str | None = Field(
        None,
        max_length=255,
        description="the label shown: a person's where there is one, else the model's",
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="the model's (calibrated) confidence, at least"
    )
    max_confidence: float | None = Field(
        None, ge=0, le=1, description="the model's (calibrated) confidence, at most"
    )
    status: ImageStatus | None = Field(None, description="queued, done or failed")
    since: str | None = Field(
        None, max_length=64, description="changed since: 30m, 2h, 7d or an ISO date/time"
    )
    path_glob: str | None = Field(
        None,
        max_length=1000,
        description="part of the path (cat matches .../my-cat-01.jpg), or a shell pattern "
        "on the whole path (*/2026/*.jpg)",
    )
    reviewed: bool | None = Field(None, description="a person labeled it (or not)")
    needs_review: bool | None = Field(
        None, description="its conformal set of likely classes (COVERAGE) is not one class"
    )
    sure: bool | None = Field(
        None, description="at or above its class's TARGET_PRECISION threshold"
    )
    near_duplicates: bool | None = Field(
        None,
        description="in a group of near-duplicates (the same picture under other bytes), as "
        "the last grouping pass found them",
    )
    dup_group: int | None = Field(
        None, ge=1, description="one group of near-duplicates, by its first image's id"
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_fields_are_unset(cls, data: Any) -> Any:
        # A form sends every field, the empty ones as "": those filter nothing.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != ""}
        return data

    @field_validator("since")
    @classmethod
    def _a_moment(cls, value: str | None) -> str | None:
        if value is not None:
            parse_since(value)  # raises ValueError with what is accepted
        return value

    @property
    def since_moment(self) -> datetime | None:
        return None if self.since is None else parse_since(self.since)

    @property
    def path_pattern(self) -> str | None:
        """``path_glob`` as a glob on the whole path: a plain word matches anywhere in it."""
        glob = self.path_glob
        if glob is None or any(c in glob for c in "*?"):
            return glob
        return f"*{glob}*"

    def active(self) -> dict[str, Any]:
        """The filters that are set, as query parameters."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}
