"""What a store's notification says was written: SeaweedFS filer events and S3 event records
(the shapes MinIO's webhook and AWS S3 send), and bodies that are neither."""

from __future__ import annotations

import json

import pytest

from objectstore.notifications import NotANotification, written_keys


def _seaweed(event_type: str, key: str, **message: object) -> bytes:
    return json.dumps({"event_type": event_type, "key": key, "message": message}).encode()


def _s3(*records: tuple[str, str, str]) -> bytes:
    return json.dumps(
        {
            "Records": [
                {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
                for name, bucket, key in records
            ]
        }
    ).encode()


def test_seaweed_events_name_the_written_key_of_this_bucket_only() -> None:
    entry = {"new_entry": {"name": "x.jpg"}}
    assert written_keys(
        _seaweed("create", "/buckets/photos/drop/a b/x.jpg", **entry), "photos"
    ) == ["drop/a b/x.jpg"]
    assert written_keys(_seaweed("update", "/buckets/photos/drop/x.jpg", **entry), "photos") == [
        "drop/x.jpg"
    ]
    assert written_keys(_seaweed("create", "/buckets/other/drop/x.jpg", **entry), "photos") == []
    assert written_keys(_seaweed("create", "/buckets/photos2/x.jpg", **entry), "photos") == []
    assert written_keys(_seaweed("delete", "/buckets/photos/drop/x.jpg"), "photos") == []
    folder = {"new_entry": {"name": "drop", "is_directory": True}}
    assert written_keys(_seaweed("create", "/buckets/photos/drop", **folder), "photos") == []
    assert written_keys(_seaweed("create", "/buckets/photos/", **entry), "photos") == []


def test_a_seaweed_rename_names_the_new_place() -> None:
    body = _seaweed(
        "rename",
        "/buckets/photos/drop/old.jpg",
        new_entry={"name": "new.jpg"},
        new_parent_path="/buckets/photos/drop/moved/",
    )
    assert written_keys(body, "photos") == ["drop/moved/new.jpg"]


def test_s3_records_name_created_keys_decoded() -> None:
    body = _s3(
        ("s3:ObjectCreated:Put", "photos", "drop/a+b/caf%C3%A9.jpg"),
        ("s3:ObjectCreated:CompleteMultipartUpload", "photos", "drop/big.jpg"),
        ("s3:ObjectRemoved:Delete", "photos", "drop/gone.jpg"),
        ("s3:ObjectCreated:Put", "another", "drop/x.jpg"),
        ("s3:ObjectCreated:Put", "photos", "drop/big.jpg"),  # a duplicate: named once
    )
    assert written_keys(body, "photos") == ["drop/a b/café.jpg", "drop/big.jpg"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"hello": "world"}',
        b'{"Records": {"not": "a list"}}',
        b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}',
    ],
)
def test_anything_else_is_refused_saying_what_was_expected(body: bytes) -> None:
    with pytest.raises(NotANotification) as refused:
        written_keys(body, "photos")
    assert str(refused.value)


def test_records_inside_sns_envelope_and_s3s_test_event() -> None:
    inner = _s3(("ObjectCreated:Put", "photos", "drop/x.jpg")).decode()
    envelope = json.dumps({"Type": "Notification", "Message": inner}).encode()
    assert written_keys(envelope, "photos") == ["drop/x.jpg"]
    hello = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "photos"})
    assert written_keys(hello.encode(), "photos") == []
