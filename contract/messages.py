"""The queue's payloads and their JSON form. Messages carry paths and content hashes, never
image bytes or ORM objects, and several files per message when a burst arrives (one Celery
message costs about a millisecond, so one message per file would cap the pipeline). Every
payload carries a version, ``v``: a worker refuses a shape it does not know rather than guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from contract.stamps import BadStamp, FileStamp

PAYLOAD_VERSION = 1


class BadMessage(ValueError):
    """A message that can never be processed (wrong shape or version): rejected, not retried."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    """What a classify message carries per image: a path and a content hash, never bytes."""

    path: str  # as the ledger stores it: contract.paths.from_ledger(path) opens it
    sha256: str
    # The file's stamp when the watcher hashed it, where it can be trusted (contract.stamps):
    # a worker that finds it unchanged need not hash the bytes again.
    stamp: FileStamp | None = None


def encode_classify(items: Sequence[WorkItem]) -> dict[str, Any]:
    return {"v": PAYLOAD_VERSION, "items": [_encode_item(i) for i in items]}


def _encode_item(item: WorkItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": item.path, "sha256": item.sha256}
    if item.stamp is not None:
        entry["stamp"] = item.stamp.encode()
    return entry


def decode_classify(payload: Any) -> list[WorkItem]:
    _check_version(payload, "classify")
    items = payload.get("items")
    if not isinstance(items, list):
        raise BadMessage("classify payload has no 'items' list")
    out = []
    for entry in items:
        path, sha = (entry.get("path"), entry.get("sha256")) if isinstance(entry, dict) else (0, 0)
        if not isinstance(path, str) or not isinstance(sha, str) or len(sha) != 64:
            raise BadMessage(f"bad classify item: {entry!r:.200}")
        try:
            stamp = FileStamp.decode(entry["stamp"]) if "stamp" in entry else None
        except BadStamp as exc:
            raise BadMessage(f"bad classify item: {exc}") from None
        out.append(WorkItem(path=path, sha256=sha, stamp=stamp))
    return out


class Trigger(StrEnum):
    """Why a training run was asked for (``training_runs.trigger``)."""

    MANUAL = "manual"  # the CLI or the web app, with the id of the run row it created
    SCHEDULE = "schedule"  # beat
    LABELS = "labels"  # RETRAIN_AFTER_LABELS new labels


@dataclass(frozen=True, slots=True)
class RetrainRequest:
    """A request for one training run."""

    trigger: Trigger = Trigger.MANUAL
    force: bool = False
    run_id: int | None = None
    fresh: bool = False

    def encode(self) -> dict[str, Any]:
        return {
            "v": PAYLOAD_VERSION,
            "trigger": str(self.trigger),
            "force": self.force,
            "run_id": self.run_id,
            "fresh": self.fresh,
        }

    @classmethod
    def decode(cls, payload: Any) -> RetrainRequest:
        _check_version(payload, "retrain")
        trigger, force = payload.get("trigger", "manual"), payload.get("force", False)
        run_id, fresh = payload.get("run_id"), payload.get("fresh", False)
        if (
            not isinstance(trigger, str)
            or trigger not in {t.value for t in Trigger}
            or not isinstance(force, bool)
            or not isinstance(fresh, bool)
            or not (run_id is None or (isinstance(run_id, int) and not isinstance(run_id, bool)))
        ):
            raise BadMessage(f"bad retrain payload: {payload!r:.200}")
        return cls(trigger=Trigger(trigger), force=force, run_id=run_id, fresh=fresh)


def _check_version(payload: Any, kind: str) -> None:
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        raise BadMessage(f"unsupported {kind} payload: {payload!r:.200}")
