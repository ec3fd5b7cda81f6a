"""The queue contract: task names and JSON payloads. Messages carry paths and content hashes,
never image bytes or ORM objects, and several files per message when a burst arrives (one Celery
message costs about a millisecond, so one message per file would cap the pipeline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from db.ledger import WorkItem

TASK_CLASSIFY = "inbox_classifier.classify"
TASK_RETRAIN = "inbox_classifier.retrain"
TASK_RECONCILE = "inbox_classifier.reconcile"

PAYLOAD_VERSION = 1


class BadMessage(ValueError):
    """A message that can never be processed (wrong shape): rejected, not retried."""


def encode_items(items: Sequence[WorkItem]) -> dict[str, Any]:
    return {"v": PAYLOAD_VERSION, "items": [{"path": i.path, "sha256": i.sha256} for i in items]}


def decode_items(payload: Any) -> list[WorkItem]:
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        raise BadMessage(f"unsupported classify payload: {payload!r:.200}")
    items = payload.get("items")
    if not isinstance(items, list):
        raise BadMessage("classify payload has no 'items' list")
    out = []
    for entry in items:
        path, sha = (entry.get("path"), entry.get("sha256")) if isinstance(entry, dict) else (0, 0)
        if not isinstance(path, str) or not isinstance(sha, str) or len(sha) != 64:
            raise BadMessage(f"bad classify item: {entry!r:.200}")
        out.append(WorkItem(path=path, sha256=sha))
    return out


def chunked(items: Sequence[WorkItem], size: int) -> list[Sequence[WorkItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
