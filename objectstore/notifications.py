"""What a store's event notification says was written: the keys of one bucket.

Two shapes arrive, by webhook or through a queue (:mod:`watcher.bucket_queue`):

- **SeaweedFS filer events** (``notification.webhook`` in the filer's ``notification.toml``):
  ``{"event_type": "create", "key": "/buckets/<bucket>/<key>", "message": {...}}``; a rename
  names its new place in ``message.new_parent_path`` and ``message.new_entry.name``.
- **S3 event records** (AWS S3 → SQS, MinIO's webhook target):
  ``{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": ...},
  "object": {"key": <URL-encoded>}}}]}``, also inside SNS's envelope (S3 → SNS → SQS:
  ``{"Type": "Notification", "Message": "<the records, as a string>"}``); S3's
  ``s3:TestEvent`` names nothing.

Deletions, folders and other buckets' objects name nothing. A notification only says where to
look: the watcher still lists that key and reads its bytes, so a forged one costs a request.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

SEAWEED_BUCKETS = "/buckets/"  # the filer's folder of S3 buckets
WRITTEN = frozenset({"create", "update", "rename"})


class NotANotification(ValueError):
    """The body is no notification this project reads; the message says what was expected."""


def written_keys(body: bytes, bucket: str) -> list[str]:
    """The keys of ``bucket`` that a notification says were written, in its order, once."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise NotANotification(f"not JSON: {exc}") from None
    events = data if isinstance(data, list) else [data]
    keys: list[str] = []
    for event in events:
        if not isinstance(event, dict):
            raise NotANotification("expected a JSON object (a SeaweedFS or S3 event)")
        if event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
            found = written_keys(event["Message"].encode(), bucket)  # SNS's envelope
        elif event.get("Event") == "s3:TestEvent":
            found = []  # S3's hello when a notification is configured
        elif "Records" in event:
            found = _s3_records(event["Records"], bucket)
        elif "event_type" in event and "key" in event:
            found = _seaweed_event(event, bucket)
        else:
            raise NotANotification(
                "expected S3 event records ({'Records': [...]}) or a SeaweedFS filer event "
                "({'event_type': ..., 'key': ...})"
            )
        keys.extend(k for k in found if k not in keys)
    return keys


def _s3_records(records: Any, bucket: str) -> list[str]:
    if not isinstance(records, list):
        raise NotANotification("'Records' must be a list")
    keys = []
    for record in records:
        try:
            name = str(record["eventName"])
            where = record["s3"]
            in_bucket = where["bucket"]["name"] == bucket
            key = unquote_plus(str(where["object"]["key"]))  # S3 encodes keys in events
        except (KeyError, TypeError):
            raise NotANotification(
                "an S3 record needs eventName, s3.bucket.name and s3.object.key"
            ) from None
        if "ObjectCreated" in name and in_bucket and key:
            keys.append(key)
    return keys


def _seaweed_event(event: dict[str, Any], bucket: str) -> list[str]:
    if event.get("event_type") not in WRITTEN:
        return []  # a deletion: the ledger keeps what it read
    message = event.get("message")
    message = message if isinstance(message, dict) else {}
    entry = message.get("new_entry")
    entry = entry if isinstance(entry, dict) else {}
    if entry.get("is_directory"):
        return []
    path = str(event["key"])
    if event["event_type"] == "rename" and message.get("new_parent_path") and entry.get("name"):
        path = f"{str(message['new_parent_path']).rstrip('/')}/{entry['name']}"
    head = f"{SEAWEED_BUCKETS}{bucket}/"
    return [path[len(head) :]] if path.startswith(head) and len(path) > len(head) else []
