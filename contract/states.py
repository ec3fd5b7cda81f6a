"""The states a row of the ledger can be in, named once for every layer: the ledger stores
these values, the roles, the CLI and the API read and filter by them."""

from __future__ import annotations

from enum import StrEnum


class ImageStatus(StrEnum):
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"


class ModelStatus(StrEnum):
    ACTIVE = "active"  # exactly one at a time: what workers classify with
    CANDIDATE = "candidate"  # trained, awaiting the gate
    REJECTED = "rejected"  # failed the gate (reason recorded)
    RETIRED = "retired"  # was active once; can be promoted again (rollback)


class RunStatus(StrEnum):
    RUNNING = "running"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by request (retrain --cancel), before anything was promoted
