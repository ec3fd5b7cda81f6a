"""The watcher's notification endpoint on a real socket: it takes the keys a store notifies,
refuses a caller without the token, a body that is no notification and one too large, and
holds each key once until the watcher's loop takes it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from contract.settings import Settings
from inbox_classifier.redis_server import free_port
from watcher.bucket_events import MAX_BODY, NotificationReceiver
from watcher.notified import NotifiedKeys

TOKEN = "a-token-of-24-characters"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[str, NotifiedKeys]]:
    settings = Settings(
        data_dir=tmp_path,
        inbox_bucket="s3://photos/drop/",
        bucket_events_listen=f"127.0.0.1:{free_port()}",
        bucket_events_token=SecretStr(TOKEN),
    )
    keys = NotifiedKeys()
    receiver = NotificationReceiver(settings, "photos", keys)
    receiver.start()
    yield f"http://127.0.0.1:{receiver.port}/", keys
    receiver.stop()


def _post(
    url: str, body: bytes, token: str | None = TOKEN, scheme: str = "Bearer "
) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, method="POST")
    if token is not None:
        request.add_header("Authorization", f"{scheme}{token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _event(key: str) -> bytes:
    return json.dumps(
        {"event_type": "create", "key": f"/buckets/photos/{key}", "message": {"new_entry": {}}}
    ).encode()


def test_notified_keys_wait_for_the_loop_once_each(endpoint: tuple[str, NotifiedKeys]) -> None:
    url, keys = endpoint
    assert not keys.arrived.is_set()
    assert _post(url, _event("drop/a.jpg")) == (200, {"keys": 1})
    assert _post(url, _event("drop/b.jpg"))[0] == 200
    assert _post(url, _event("drop/a.jpg"), scheme="")[0] == 200  # a bare token; a repeat
    assert keys.arrived.is_set()
    assert keys.take() == ["drop/a.jpg", "drop/b.jpg"]
    assert not keys.arrived.is_set() and keys.take() == []


def test_callers_without_the_token_and_bad_bodies_are_refused(
    endpoint: tuple[str, NotifiedKeys],
) -> None:
    url, keys = endpoint
    status, body = _post(url, _event("drop/a.jpg"), token=None)
    assert status == 401 and "BUCKET_EVENTS_TOKEN" in str(body["error"])
    assert _post(url, _event("drop/a.jpg"), token="not-the-token-at-all-no")[0] == 401
    status, body = _post(url, b"{not json")
    assert status == 400 and "JSON" in str(body["error"])
    status, body = _post(url, b"x" * (MAX_BODY + 1))
    assert status == 413
    assert keys.take() == []


def test_a_flood_beyond_what_is_held_is_left_to_the_listing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import watcher.notified as module

    monkeypatch.setattr(module, "MAX_WAITING", 3)
    keys = NotifiedKeys()
    keys.add([f"drop/{i}.jpg" for i in range(5)])
    assert keys.take() == ["drop/0.jpg", "drop/1.jpg", "drop/2.jpg"] and keys.dropped == 2
