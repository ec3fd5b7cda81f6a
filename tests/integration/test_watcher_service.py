"""The watcher service in a thread against a real redis-server and a real SQLite ledger, with
real image files. No worker runs: the queue itself is inspected (kombu keeps a Redis list named
after the queue, each entry a JSON envelope whose base64 body is ``[args, kwargs, embed]``)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import make_url

from contract.paths import from_ledger
from contract.queues import CLASSIFY_QUEUE
from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImagePath, ImageStatus
from inbox_classifier.redis_server import RedisServer, free_port
from tests.helpers.images import write_image, write_images
from tests.helpers.pipeline import count, wait_until
from watcher.service import Watcher

pytestmark = pytest.mark.timeout(120)


@contextmanager
def watching(settings: Settings) -> Iterator[Watcher]:
    """The real watcher on a thread; stopped (and checked to stop) at the end."""
    watcher = Watcher(settings)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, ready), daemon=True)
    thread.start()
    assert ready.wait(30), "the watcher did not take in its start-up rescan"
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the watcher did not stop"


def queued_messages(redis_url: str | None) -> list[list[dict[str, str]]]:
    """The work items of each message waiting in the classify queue."""
    assert redis_url
    client = redis.Redis.from_url(redis_url)
    try:
        raw_messages = client.lrange(CLASSIFY_QUEUE, 0, -1)
    finally:
        client.close()
    messages = []
    for raw in raw_messages:
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append(args[0]["items"])
    return messages


def queued_items(redis_url: str | None) -> list[dict[str, str]]:
    return [item for message in queued_messages(redis_url) for item in message]


def rows(session_factory) -> list[Image]:  # type: ignore[no-untyped-def]
    with transaction(session_factory) as session:
        images = list(session.scalars(select(Image)))
        for image in images:
            _ = image.paths  # loaded while the session is open
        return images


def recorded_paths(session_factory) -> set[str]:  # type: ignore[no-untyped-def]
    with transaction(session_factory) as session:
        return set(session.scalars(select(ImagePath.path)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- while it runs -------------------------------------------------------------------------------


def test_a_burst_is_recorded_and_packed_into_few_messages(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    files = write_images(tmp_path / "staging", 50)
    hashes = {str(settings.inbox / p.name): sha256(p) for p in files}
    with watching(settings):
        for path in files:
            os.replace(path, settings.inbox / path.name)  # as a well-behaved producer does
        wait_until(lambda: count(session_factory) == 50, 30, "50 rows")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 50, 30, "50 items queued")
        wait_until(
            lambda: all(i.enqueued_at is not None for i in rows(session_factory)), 10, "marked"
        )
    images = rows(session_factory)
    assert {i.status for i in images} == {ImageStatus.QUEUED}
    assert recorded_paths(session_factory) == set(hashes)
    messages = queued_messages(settings.redis_url)
    items = {(item["path"], item["sha256"]) for message in messages for item in message}
    assert items == set(hashes.items())
    assert len(messages) < 50, "a burst must be packed several files per message"
    assert all(len(m) <= settings.files_per_message for m in messages)
    print(f"\n[measured] burst of 50: {len(messages)} messages")


def test_a_dropped_file_is_recorded_within_milliseconds(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """Closed or renamed files need no quiet period: drop -> row is the watcher's own few ms
    (the fixture's quiet period is 0.3 s, so any wait on it would show)."""
    latencies = []
    with watching(settings):
        for i in range(10):
            staged = write_image(tmp_path / "staging" / f"one_{i}.jpg", i)
            started = time.perf_counter()
            if i % 2:
                os.replace(staged, settings.inbox / staged.name)
            else:
                shutil.copyfile(staged, settings.inbox / staged.name)  # written in place
            wait_until(lambda n=i + 1: count(session_factory) == n, 10, "the row", every=0.002)
            latencies.append(time.perf_counter() - started)
    p50 = statistics.median(latencies)
    print(f"\n[measured] drop -> row p50 {p50 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert p50 < 0.15, latencies


def test_a_slowly_written_file_is_recorded_only_once_complete(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    data = write_image(tmp_path / "big.png", seed=7, size=(400, 300)).read_bytes()
    target = settings.inbox / "slow.png"
    pieces = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    with watching(settings):
        with open(target, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
                handle.flush()
                # Pauses longer than the quiet period: only the close may say it is done.
                time.sleep(settings.quiet_period_s + 0.1)
                assert count(session_factory) == 0, "recorded while still being written"
        wait_until(lambda: count(session_factory) == 1, 10, "the finished file")
        time.sleep(0.3)
    (image,) = rows(session_factory)
    assert image.size == len(data) == target.stat().st_size
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert [i["sha256"] for i in queued_items(settings.redis_url)] == [image.sha256]


def test_same_content_under_two_names_is_one_image_with_two_paths(
    settings: Settings, session_factory
) -> None:
    with watching(settings):
        original = write_image(settings.inbox / "a.jpg", 1)
        shutil.copyfile(original, settings.inbox / "copy of a.jpg")
        wait_until(lambda: len(recorded_paths(session_factory)) == 2, 10, "both paths")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 1, 10, "one item")
        time.sleep(0.3)
    (image,) = rows(session_factory)
    assert {p.path for p in image.paths} == {str(original), str(settings.inbox / "copy of a.jpg")}
    assert [i["sha256"] for i in queued_items(settings.redis_url)] == [image.sha256]


def test_hidden_temporary_special_and_outside_files_are_ignored_folders_are_found(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    inbox = settings.inbox
    secret = write_image(tmp_path / "outside" / "secret.jpg", 99)
    with watching(settings) as watcher:
        # Special files first: were any of them opened, the watcher would hang on it.
        os.mkfifo(inbox / "fifo.jpg")
        (inbox / "link-out.jpg").symlink_to(secret)
        write_image(inbox / ".secret.jpg", 2)
        write_image(inbox / ".staging" / "x.jpg", 3)
        write_image(inbox / "half.jpg.part", 4, fmt="JPEG")
        write_image(inbox / "doc.jpg.tmp", 5, fmt="JPEG")
        album = write_images(tmp_path / "album" / "deep", 3, start_seed=10)
        os.replace(tmp_path / "album", inbox / "album")  # a folder moved in whole
        made = write_images(inbox / "made" / "here", 2, start_seed=20)  # a folder made in place
        (inbox / "link-in.jpg").symlink_to(inbox / "made" / "here" / made[0].name)
        write_image(inbox / "plain.jpg", 30)
        expected = (
            {str(inbox / "album" / "deep" / p.name) for p in album}
            | {str(p) for p in made}
            | {str(inbox / "link-in.jpg"), str(inbox / "plain.jpg")}
        )
        wait_until(lambda: recorded_paths(session_factory) == expected, 15, "the good files")
        time.sleep(settings.quiet_period_s * 2)  # anything else would land now
        assert recorded_paths(session_factory) == expected
        assert watcher.recorded >= len(expected)
    assert secret.read_bytes() and sha256(secret) not in {i.sha256 for i in rows(session_factory)}
    assert count(session_factory) == len(expected) - 1  # link-in.jpg shares made[0]'s content


def test_hash_processes_find_record_and_skip_as_the_threads_do(
    settings: Settings, session_factory
) -> None:
    """HASH_PROCESSES: inspect and hash in worker processes; the same files recorded, the same
    ones skipped, the start-up rescan's and the events' alike."""
    s = settings.model_copy(update={"hash_processes": 2})
    write_images(s.inbox / "before", 5)  # found by the start-up rescan
    write_image(s.inbox / BAD_NAME, 9)
    write_image(s.inbox / ".hidden.jpg", 10)
    os.mkfifo(s.inbox / "fifo.jpg")
    with watching(s) as watcher:
        write_images(s.inbox / "after", 4, start_seed=40)  # found by events
        wait_until(lambda: count(session_factory) == 10, 30, "10 rows")
        wait_until(lambda: len(queued_items(s.redis_url)) == 10, 30, "10 items")
        assert watcher.recorded == 10
    assert not any(".hidden" in p or "fifo" in p for p in recorded_paths(session_factory))
    with watching(s) as again:  # nothing new: nothing hashed, recorded or sent
        wait_until(lambda: again.scans >= 1, 15, "the start-up rescan")
    assert again.recorded == 0 and again.sent == 0


def test_polling_observer_for_network_mounts(settings: Settings, session_factory) -> None:
    polling = settings.model_copy(update={"polling": True, "poll_interval_s": 0.1})
    with watching(polling):
        write_images(polling.inbox / "sub", 3)
        wait_until(lambda: count(session_factory) == 3, 15, "3 rows")
        wait_until(lambda: len(queued_items(polling.redis_url)) == 3, 15, "3 items")


@pytest.mark.parametrize(
    "name", ["with space.jpg", "ünïcødé-名前.jpg", "-leading-dash.jpg", "new\nline.jpg"]
)
def test_odd_filenames(settings: Settings, session_factory, name: str) -> None:
    with watching(settings):
        write_image(settings.inbox / name, 5)
        wait_until(lambda: count(session_factory) == 1, 10, "1 row")
    assert recorded_paths(session_factory) == {str(settings.inbox / name)}


BAD_NAME = os.fsdecode(b"bad-\xff\xfe.jpg")  # bytes no UTF-8 decoder accepts


def test_a_name_that_is_not_utf8_is_recorded_and_does_not_stall_later_files(
    settings: Settings, session_factory
) -> None:
    """Such a name used to make every later insert fail: nothing after it was recorded."""
    with watching(settings):
        write_image(settings.inbox / BAD_NAME, 5)
        write_image(settings.inbox / "after.jpg", 6)
        wait_until(lambda: count(session_factory) == 2, 10, "both files recorded")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 2, 10, "both sent")
        os.unlink(settings.inbox / BAD_NAME)
        write_image(settings.inbox / "later.jpg", 7)
        wait_until(lambda: count(session_factory) == 3, 10, "a later file too")
    stored = recorded_paths(session_factory)
    escaped = "bytes:" + str(settings.inbox / "bad-\\xff\\xfe.jpg")
    assert escaped in stored, stored
    items = {i["path"] for i in queued_items(settings.redis_url)}
    assert escaped in items
    assert from_ledger(escaped) == str(settings.inbox / BAD_NAME)


def test_a_name_that_is_not_utf8_does_not_stop_the_startup_rescan(
    settings: Settings, session_factory
) -> None:
    write_image(settings.inbox / BAD_NAME, 5)
    write_images(settings.inbox / "while-down", 3, start_seed=20)
    with watching(settings) as watcher:
        wait_until(lambda: count(session_factory) == 4, 15, "all 4 found by the rescan")
    assert watcher.scans >= 1


def test_one_file_the_ledger_refuses_fails_alone(
    settings: Settings, session_factory, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A burst the ledger refuses for a reason other than being unavailable is recorded file
    by file: the bad one is logged, once, and the rest are recorded and sent."""
    import db.ledger
    import watcher.recorder

    real = db.ledger.record_files

    def refuse_one(session, files):  # type: ignore[no-untyped-def]
        if any(f.path.endswith("poison.jpg") for f in files):
            raise ValueError("this value cannot be stored")
        return real(session, files)

    monkeypatch.setattr(watcher.recorder, "record_files", refuse_one)
    write_image(settings.inbox / "poison.jpg", 1)
    write_images(settings.inbox / "fine", 4, start_seed=30)
    with watching(settings):
        wait_until(lambda: count(session_factory) == 4, 15, "the 4 good files")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 4, 15, "4 sent")
    refused = [r for r in caplog.records if "could not record" in r.getMessage()]
    assert len(refused) == 1 and "poison.jpg" in refused[0].getMessage()
    assert refused[0].levelname == "ERROR"


def test_the_inbox_removed_and_recreated_is_watched_again(
    settings: Settings, session_factory
) -> None:
    with watching(settings):
        shutil.rmtree(settings.inbox)
        time.sleep(0.2)
        settings.inbox.mkdir()
        write_image(settings.inbox / "after.jpg", 1)
        wait_until(lambda: count(session_factory) == 1, 15, "the file in the new inbox")


def test_publisher_never_sends_content_twice_while_it_is_in_flight(
    settings: Settings, session_factory
) -> None:
    """Two names for one content recorded in two bursts: the second read can predate the
    first one's mark, so the ledger alone would send it again. Content revived after its
    mark (a later read) is sent again."""
    from broker.app import make_celery
    from contract.messages import WorkItem
    from watcher.publisher import Publisher

    app = make_celery(settings)
    try:
        publisher = Publisher(app, session_factory, settings.files_per_message)
        a, b = WorkItem("/in/a.jpg", "a" * 64), WorkItem("/in/b.jpg", "b" * 64)
        read_at = publisher.generation()
        assert publisher.submit([a], read_at) == 1
        assert publisher.submit([WorkItem("/in/copy of a.jpg", a.sha256), b], read_at) == 1
        assert publisher.flush() and publisher.unsent == 0
        assert [i["path"] for i in queued_items(settings.redis_url)] == [a.path, b.path]
        assert publisher.submit([a], read_at) == 0  # read before the mark: a stale duplicate
        assert publisher.submit([a], publisher.generation()) == 1  # read after it: meant
    finally:
        app.close()


# --- across restarts -----------------------------------------------------------------------------


def test_startup_rescan_finds_files_dropped_while_down_and_sends_nothing_twice(
    settings: Settings, session_factory
) -> None:
    nested = write_images(settings.inbox / "nested" / "deeper", 5)
    write_images(settings.inbox, 3, start_seed=50)
    with watching(settings):
        wait_until(lambda: count(session_factory) == 8, 15, "8 rows")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 8, 15, "8 items")

    with watching(settings) as again:  # nothing new: nothing hashed, recorded or sent
        wait_until(lambda: again.scans >= 1, 10, "the start-up rescan")
    assert again.recorded == 0 and again.sent == 0
    assert len(queued_items(settings.redis_url)) == 8

    write_image(nested[0], seed=1234)  # changed while the watcher was down
    with watching(settings) as third:
        wait_until(lambda: count(session_factory) == 9, 15, "the new content")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 9, 15, "9 items")
    assert third.recorded == 1
    assert len(recorded_paths(session_factory)) == 8


# --- failures ------------------------------------------------------------------------------------


def test_redis_down_keeps_rows_queued_and_the_watcher_alive(
    settings: Settings, session_factory
) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    started = time.monotonic()
    with watching(dead) as watcher:
        write_images(dead.inbox, 3)
        wait_until(lambda: count(session_factory) == 3, 15, "3 rows recorded")
        wait_until(lambda: watcher.publisher.failures >= 2, 20, "retried sends")
        write_image(dead.inbox / "later.jpg", 77)  # recording goes on meanwhile
        wait_until(lambda: count(session_factory) == 4, 10, "a 4th row while Redis is down")
        assert watcher.sent == 0 and watcher.unsent == 4
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10, "stopping must not wait for Redis"
    images = rows(session_factory)
    assert {i.status for i in images} == {ImageStatus.QUEUED}
    assert all(i.enqueued_at is None for i in images)  # so the reconciler sends them
    print(f"\n[measured] redis-down case took {time.monotonic() - started:.1f}s")


def test_items_held_while_redis_is_down_are_sent_when_it_is_back(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", persist=False)
    server.start()
    own = settings.model_copy(update={"redis_url": server.url})
    try:
        with watching(own) as watcher:
            server.stop()
            write_images(own.inbox, 4)
            wait_until(lambda: count(session_factory) == 4, 15, "4 rows recorded")
            wait_until(lambda: watcher.publisher.failures >= 1, 20, "a failed send")
            server.start()  # same port
            wait_until(lambda: len(queued_items(own.redis_url)) == 4, 40, "4 items after all")
            wait_until(
                lambda: all(i.enqueued_at is not None for i in rows(session_factory)),
                10,
                "marked enqueued",
            )
    finally:
        server.stop()


def test_ledger_locked_for_a_while_then_everything_is_recorded(
    settings: Settings, session_factory
) -> None:
    """Another process holds the SQLite write lock past the busy timeout: the watcher logs,
    backs off, keeps its hashed files and records them once the lock is gone."""
    database = make_url(settings.db_url).database
    assert database
    with watching(settings) as watcher:
        blocker = sqlite3.connect(database, timeout=1)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            write_images(settings.inbox, 3)
            wait_until(lambda: watcher._db_backoff.failures >= 1, 20, "a failed transaction")
        finally:
            blocker.rollback()
            blocker.close()
        wait_until(lambda: count(session_factory) == 3, 40, "3 rows once unlocked")
        wait_until(lambda: len(queued_items(settings.redis_url)) == 3, 10, "3 items")
