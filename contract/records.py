"""What the roles hand to the ledger: files the watcher found, and a batch's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from contract.failures import FailureKind
from contract.stamps import FileStamp


@dataclass(frozen=True, slots=True)
class SeenFile:
    """A completely written file in the inbox, hashed by the watcher."""

    path: str  # as the file system names it; the ledger stores contract.paths.to_ledger(path)
    sha256: str
    size: int
    mtime_ns: int
    # Its format says more is to come (imaging.trailers): the watcher waits before recording it.
    unfinished: bool = False
    # Where a reader can trust it (contract.stamps): the worker then need not hash it again.
    stamp: FileStamp | None = None


class LabelScore(TypedDict):
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Classified:
    sha256: str
    label: str
    confidence: float  # calibrated where the version is (contract.calibration)
    topk: list[LabelScore]
    # The version's conformal prediction set holds more or fewer than one class; None when
    # the version is not calibrated.
    needs_review: bool | None = None
    # At or above the class's target-precision threshold; None where the class has none.
    sure: bool | None = None
    # The pixels' 256-bit perceptual hash (imaging.perceptual); None where the device decoded.
    phash: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    sha256: str
    error: str
    kind: FailureKind = FailureKind.OTHER
