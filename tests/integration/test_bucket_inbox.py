"""An inbox in S3-compatible object storage, end to end on a real S3 server (SeaweedFS): the
watcher lists the bucket, the workers read by GET, nothing is read twice, odd keys are just
names, and bad objects fail alone with a reason."""

from __future__ import annotations

import io
import json
import time
import unicodedata
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from contract.failures import FailureKind, Unusable
from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImagePath, ImageStatus, Prediction
from objectstore.inbox import read_item, store_for
from objectstore.labeled import mirror
from tests.helpers.images import random_image
from tests.helpers.object_store import SeaweedServer
from tests.helpers.pipeline import count, wait_until
from tests.helpers.procs import finished, running
from tests.helpers.web import client


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_image(seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_image(seed).save(buffer, "PNG")
    return buffer.getvalue()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def test_a_bucket_inbox_is_classified_once_read_by_get(
    bucket_settings: Settings, session_factory, tmp_path: Path
) -> None:
    s = bucket_settings
    store = store_for(s)
    assert store is not None
    s3, bucket = store.client, store.location.bucket
    cafe = "café.png"
    objects = {f"drop/batch/{i:03d}.jpg": _jpeg(i) for i in range(20)}
    objects |= {
        # SeaweedFS refuses '..' in keys (AWS takes them: tests/unit/contract/test_bucket.py).
        "drop/odd/line\nbreak.png": _png(100),  # a control character in a key
        "drop/odd/" + "/".join(["k" * 200] * 4) + ".png": _png(101),  # an 818-character key
        "drop/odd/Case.png": _png(102),
        "drop/odd/case.png": _png(103),  # differs only by case: another object
        "drop/odd/" + unicodedata.normalize("NFC", cafe): _png(104),
        "drop/odd/" + unicodedata.normalize("NFD", cafe): _png(105),  # and by normalisation
        "drop/odd/spaces and % signs #1.jpg": _jpeg(106),
        "drop/twin-of-000.jpg": objects["drop/batch/000.jpg"],  # same bytes, another key
        "drop/broken.jpg": b"\xff\xd8\xff\xe0 this is not a JPEG",
    }
    ignored = {
        "drop/.staging/partial.jpg": _jpeg(200),  # hidden: a sync tool's staging
        "labeled/cat/example.jpg": _jpeg(201),  # the labeled copies' place
        "elsewhere/outside.jpg": _jpeg(202),  # outside the prefix
    }
    for key, data in {**objects, **ignored}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="drop/folder/", Body=b"")  # a console's folder marker
    contents = len(set(objects.values()))
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        running(s, "worker", log=logs / "worker.log"),
        running(s, "watch", log=logs / "watch.log"),
    ):
        wait_until(
            lambda: count(session_factory, ImageStatus.DONE, ImageStatus.FAILED) == contents,
            120,
            f"{contents} done or failed\n{_tail(logs / 'watch.log')}\n{_tail(logs / 'worker.log')}",
        )
        # New objects, whatever their keys sort as, are found by the next listing (a prefix
        # this small lists in milliseconds), long before a RESCAN_INTERVAL_S full pass.
        s3.put_object(Bucket=bucket, Key="drop/zz-late.jpg", Body=_jpeg(300))
        s3.put_object(Bucket=bucket, Key="drop/aa-late.jpg", Body=_jpeg(301))
        # An object overwritten with other bytes is new content.
        s3.put_object(Bucket=bucket, Key="drop/batch/001.jpg", Body=_jpeg(302))
        started = time.monotonic()
        wait_until(
            lambda: count(session_factory) == contents + 3,
            30,
            "the late objects\n" + _tail(logs / "watch.log"),
        )
        assert time.monotonic() - started < s.bucket_list_interval_s + 3.0
        wait_until(
            lambda: count(session_factory, ImageStatus.DONE, ImageStatus.FAILED) == contents + 3,
            60,
            "the late objects classified\n" + _tail(logs / "worker.log"),
        )
        time.sleep(2 * s.bucket_list_interval_s)  # anything sent twice would land now

    with transaction(session_factory) as session:
        paths = set(session.scalars(select(ImagePath.path)))
        expected = {store.location.url_of(k) for k in objects}
        expected |= {store.location.url_of(k) for k in ("drop/zz-late.jpg", "drop/aa-late.jpg")}
        assert paths == expected
        per_image = session.execute(
            select(Prediction.image_id, func.count()).group_by(Prediction.image_id)
        ).all()
        assert per_image and all(n == 1 for _, n in per_image)
        broken = session.scalars(
            select(Image).join(ImagePath).where(ImagePath.path.like("%/drop/broken.jpg"))
        ).one()
        assert broken.status == ImageStatus.FAILED and broken.error
        twin = session.scalars(
            select(Image).join(ImagePath).where(ImagePath.path.like("%/drop/twin-of-000.jpg"))
        ).one()
        assert len(twin.paths) == 2 and twin.status == ImageStatus.DONE
        assert twin.phash is not None  # the worker decoded what it read by GET

    # `results` names them by their URL.
    shown = finished(s, "results", "--format", "json", "--limit", "500", timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert {row["path"] for row in rows} >= {store.location.url_of("drop/odd/Case.png")}

    # The web app reads them by GET too, and a label makes a training copy from the bytes.
    api = client(s)
    assert api.get(f"/api/images/{twin.sha256}/thumbnail").status_code == 200
    labeled = api.post(
        "/api/labels", json={"sha256": twin.sha256, "label": "cat", "new_class": True}
    )
    assert labeled.status_code == 201, labeled.text
    assert (s.labeled_path / "cat").is_dir() and any((s.labeled_path / "cat").iterdir())

    def copies() -> set[str]:
        return {i.key for i in store.listing_under("labeled/")} - {"labeled/cat/example.jpg"}

    # ... and a server-side copy in the bucket's labeled/, which follows the ledger.
    assert copies() == {f"labeled/cat/{twin.sha256}.jpg"}
    moved = api.post("/api/labels", json={"sha256": twin.sha256, "label": "dog", "new_class": True})
    assert moved.status_code == 201, moved.text
    assert copies() == {f"labeled/dog/{twin.sha256}.jpg"}
    assert api.delete(f"/api/labels/{twin.sha256}").status_code == 200
    assert copies() == set()


def test_objects_that_are_gone_or_too_large_fail_with_a_reason(bucket_settings: Settings) -> None:
    store = store_for(bucket_settings)
    assert store is not None
    store.client.put_object(Bucket=store.location.bucket, Key="drop/big.jpg", Body=_jpeg(1))
    small = bucket_settings.model_copy(update={"max_file_bytes": 100})
    with pytest.raises(Unusable) as too_large:
        read_item(small, store.location.url_of("drop/big.jpg"))
    assert too_large.value.kind is FailureKind.TOO_LARGE and "MAX_FILE_BYTES" in str(
        too_large.value
    )
    with pytest.raises(Unusable) as gone:
        read_item(bucket_settings, store.location.url_of("drop/never-written.jpg"))
    assert gone.value.kind is FailureKind.VANISHED and "gone" in str(gone.value)
    with pytest.raises(Unusable) as elsewhere:
        read_item(bucket_settings, "s3://another-bucket/drop/x.jpg")
    assert elsewhere.value.kind is FailureKind.UNREADABLE


def test_a_bucket_that_cannot_be_reached_stops_the_watcher_with_a_reason(
    bucket_settings: Settings, seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    done = finished(bucket_settings, "watch")
    assert done.returncode == 2, done.stderr
    assert "INBOX" in done.stderr and "127.0.0.1:9" in done.stderr
    missing = bucket_settings.model_copy(update={"inbox_bucket": "s3://no-such-bucket-here/"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    done = finished(missing, "watch")
    assert done.returncode == 2 and "no-such-bucket-here" in done.stderr, done.stderr


def test_corrections_live_in_the_bucket_and_the_trainer_mirrors_them(
    bucket_settings: Settings, tmp_path: Path
) -> None:
    store = store_for(bucket_settings)
    assert store is not None
    s3, bucket = store.client, store.location.bucket
    for key, data in {
        "labeled/bird/a.jpg": _jpeg(1),
        "labeled/bird/b.png": _png(2),
        "labeled/loose.jpg": _jpeg(3),  # no class folder
        "labeled/bird/.partial.jpg": _jpeg(4),  # hidden
        "labeled/_val/bird/c.jpg": _jpeg(5),  # not labeled/<class>/<name>
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    root, state = tmp_path / "labeled", tmp_path / "state"
    (root / "bird").mkdir(parents=True)
    (root / "bird" / "mine.jpg").write_bytes(_jpeg(6))  # a person's own file: left alone
    first = mirror(store, root, state)
    assert (first.files, first.downloaded, first.removed, first.skipped) == (2, 2, 0, 3)
    assert (root / "bird" / "a.jpg").read_bytes() == _jpeg(1)
    assert mirror(store, root, state).downloaded == 0  # nothing changed: nothing read
    s3.delete_object(Bucket=bucket, Key="labeled/bird/a.jpg")  # undone on another host
    s3.put_object(Bucket=bucket, Key="labeled/bird/b.png", Body=_png(7))  # replaced
    again = mirror(store, root, state)
    assert (again.files, again.downloaded, again.removed) == (1, 1, 1)
    assert not (root / "bird" / "a.jpg").exists()
    assert (root / "bird" / "b.png").read_bytes() == _png(7)
    assert (root / "bird" / "mine.jpg").exists()


def test_notified_objects_are_found_within_a_second_between_listings(
    settings: Settings, session_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS's filer POSTs its events to the watcher (BUCKET_EVENTS_LISTEN); with listings
    30 s apart, what is found within a second was found by a notification, in any key order,
    and an object overwritten with other bytes too. A forged notification records nothing."""
    from pydantic import SecretStr

    from inbox_classifier.redis_server import free_port

    port, token = free_port(), "notifications-token-0123"
    server = SeaweedServer(
        tmp_path / "weed", webhook=f"http://127.0.0.1:{port}/", webhook_token=token
    )
    server.start()
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="notified")
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        s = settings.model_copy(
            update={
                "inbox_bucket": "s3://notified/drop/",
                "bucket_list_interval_s": 30.0,
                "bucket_events_listen": f"127.0.0.1:{port}",
                "bucket_events_token": SecretStr(token),
            }
        )
        s3.put_object(Bucket="notified", Key="drop/m-first.jpg", Body=_jpeg(400))
        log = tmp_path / "watch.log"
        with running(s, "watch", log=log):
            wait_until(lambda: count(session_factory) == 1, 60, "the first listing\n" + _tail(log))
            time.sleep(1.0)  # the start-up pass is over: the next listing is 30 s away
            latencies = []
            # Keys before and after the listing's marker, and an overwrite (an update event).
            keys = [f"drop/{c}-{i}.jpg" for i, c in enumerate("azbyc")] + ["drop/m-first.jpg"]
            for i, key in enumerate(keys):
                before = count(session_factory)
                written = time.monotonic()
                s3.put_object(Bucket="notified", Key=key, Body=_jpeg(500 + i))
                wait_until(
                    lambda b=before: count(session_factory) > b,
                    10,
                    f"{key} by notification\n{_tail(log)}",
                )
                latencies.append(time.monotonic() - written)
            forged = json.dumps(
                {"event_type": "create", "key": "/buckets/notified/drop/never-written.jpg"}
            ).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/",
                data=forged,
                method="POST",
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            time.sleep(1.0)
            assert count(session_factory) == 1 + len(keys)
        latencies.sort()
        print(
            f"\n[measured] notified object -> row: p50 {latencies[len(latencies) // 2]:.2f} s, "
            f"max {latencies[-1]:.2f} s (listing every 30 s)"
        )
        assert latencies[len(latencies) // 2] <= 1.0
        assert latencies[-1] < 5.0
        assert "taking bucket notifications" in log.read_text()
    finally:
        server.stop()


def test_a_notification_endpoint_that_cannot_be_served_stops_the_watcher_with_a_reason(
    bucket_settings: Settings, settings: Settings
) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = bucket_settings.model_copy(update={"bucket_events_listen": f"127.0.0.1:{port}"})
        done = finished(busy, "watch")
    assert done.returncode == 2 and "BUCKET_EVENTS_LISTEN" in done.stderr, done.stderr
    assert "cannot listen there" in done.stderr
    folder = settings.model_copy(update={"bucket_events_listen": "127.0.0.1:8334"})
    done = finished(folder, "watch")
    assert done.returncode == 2 and "only a bucket inbox" in done.stderr, done.stderr
