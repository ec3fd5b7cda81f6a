"""The watcher: unit tests of its pure parts, and the real service in a thread against a real
redis-server and SQLite (no worker: the queue itself is inspected)."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from db.engine import transaction
from db.models import Image, ImagePath, ImageStatus
from inbox_classifier.redis_server import free_port
from inbox_classifier.settings import Settings
from tests.helpers.images import write_image, write_images
from tests.helpers.pipeline import count, wait_until
from watcher.filters import skip_reason
from watcher.service import Watcher
from watcher.stability import FileState, StabilityTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- filters -------------------------------------------------------------------------------------


def test_filters(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / ".hidden-dir").mkdir(parents=True)
    outside = write_image(tmp_path / "outside.jpg", 1)
    cases = {
        "ok.jpg": None,
        ".hidden.jpg": "hidden",
        ".hidden-dir/x.jpg": "hidden",
        "dl.jpg.part": "temporary file",
        "a.tmp": "temporary file",
        "b.crdownload": "temporary file",
    }
    for name in cases:
        write_image(inbox / name, 2, fmt="JPEG")
    for name, reason in cases.items():
        assert skip_reason(inbox / name, inbox) == reason, name
    os.mkfifo(inbox / "pipe.jpg")
    assert skip_reason(inbox / "pipe.jpg", inbox) == "not a regular file"
    (inbox / "escape.jpg").symlink_to(outside)
    assert skip_reason(inbox / "escape.jpg", inbox) == "symlink pointing outside the inbox"
    (inbox / "inside.jpg").symlink_to(inbox / "ok.jpg")
    assert skip_reason(inbox / "inside.jpg", inbox) is None
    assert skip_reason(inbox / "missing.jpg", inbox) == "vanished"


# --- stability -----------------------------------------------------------------------------------


def test_close_write_is_ready_at_once(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    tracker = StabilityTracker(quiet_period=5.0, clock=FakeClock())
    tracker.notify(path, FileState.WRITING)
    assert tracker.take_ready() == []
    tracker.notify(path, FileState.COMPLETE)
    assert tracker.take_ready() == [path]
    assert tracker.pending() == 0


def test_file_being_written_waits_for_its_close_however_long(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    clock = FakeClock()
    tracker = StabilityTracker(quiet_period=1.0, clock=clock)
    tracker.notify(path, FileState.WRITING)
    tracker.notify(path, FileState.SEEN)  # a late "created" does not undo the write
    for _ in range(5):
        clock.now += 10
        assert tracker.take_ready() == []


def test_without_close_events_a_quiet_period_decides(tmp_path: Path) -> None:
    target = write_image(tmp_path / "a.jpg", 1)
    path = str(target)
    clock = FakeClock()
    tracker = StabilityTracker(quiet_period=1.0, clock=clock)
    tracker.notify(path, FileState.SEEN)
    assert tracker.take_ready() == []  # first look: remember size/mtime
    clock.now += 0.6
    with open(target, "ab") as handle:  # still growing
        handle.write(b"more")
    os.utime(target, ns=(1, 1))
    assert tracker.take_ready() == []
    clock.now += 0.6
    assert tracker.take_ready() == []  # only 0.6 s stable
    clock.now += 0.6
    assert tracker.take_ready() == [path]


def test_a_write_after_the_close_makes_it_pending_again(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    tracker = StabilityTracker(quiet_period=1.0, clock=FakeClock())
    tracker.notify(path, FileState.COMPLETE)
    tracker.notify(path, FileState.WRITING)
    assert tracker.take_ready() == []


# --- the service ---------------------------------------------------------------------------------


@contextmanager
def watching(settings: Settings) -> Iterator[Watcher]:
    watcher = Watcher(settings)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, ready), daemon=True)
    thread.start()
    assert ready.wait(30), "watcher did not finish its first scan"
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def queued_items(redis_url: str) -> list[list[dict[str, str]]]:
    """Work items per message, read off the Redis list kombu keeps for the queue."""
    client = redis.Redis.from_url(redis_url)
    messages = []
    for raw in client.lrange("classify", 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append(args[0]["items"])
    client.close()
    return messages


def test_a_burst_is_recorded_and_packed_into_few_messages(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    files = write_images(staging, 50)
    with watching(settings):
        for path in files:
            os.replace(path, settings.inbox / path.name)
        wait_until(lambda: count(session_factory) == 50, 30, "50 rows")
        wait_until(
            lambda: sum(map(len, queued_items(settings.redis_url or ""))) == 50,
            30,
            "50 items queued",
        )
    messages = queued_items(settings.redis_url or "")
    assert len(messages) < 50
    assert all(len(m) <= settings.files_per_message for m in messages)
    with transaction(session_factory) as session:
        assert all(i.enqueued_at is not None for i in session.scalars(select(Image)))


def test_startup_rescan_finds_files_dropped_while_down_and_sends_nothing_twice(
    settings: Settings, session_factory
) -> None:
    write_images(settings.inbox / "nested" / "deeper", 5)
    write_images(settings.inbox, 3, start_seed=50)
    with watching(settings):
        wait_until(lambda: count(session_factory) == 8, 30, "8 rows")
    sent = sum(map(len, queued_items(settings.redis_url or "")))
    assert sent == 8
    with watching(settings) as again:
        pass
    assert again.recorded == 0 and sum(map(len, queued_items(settings.redis_url or ""))) == 8


def test_duplicates_hidden_temp_and_folders(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    with watching(settings):
        original = write_image(settings.inbox / "a.jpg", 1)
        (settings.inbox / "copy of a.jpg").write_bytes(original.read_bytes())
        write_image(settings.inbox / ".secret.jpg", 2)
        write_image(settings.inbox / "half.jpg.part", 3, fmt="JPEG")
        folder = tmp_path / "album"
        write_images(folder, 4, start_seed=10)
        os.replace(folder, settings.inbox / "album")  # a folder moved in whole
        wait_until(lambda: count(session_factory) == 5, 30, "5 rows")
        wait_until(lambda: sum(map(len, queued_items(settings.redis_url or ""))) == 5, 30, "sent")
    with transaction(session_factory) as session:
        paths = {Path(p).name for p in session.scalars(select(ImagePath.path))}
        assert paths == {"a.jpg", "copy of a.jpg"} | {f"img_{i:05d}.jpg" for i in range(10, 14)}
        twin = session.scalars(
            select(Image).join(ImagePath).where(ImagePath.path == str(original))
        ).one()
        assert len(twin.paths) == 2


def test_polling_observer_for_network_mounts(settings: Settings, session_factory) -> None:
    polling = settings.model_copy(
        update={"polling": True, "poll_interval_s": 0.2, "quiet_period_s": 0.3}
    )
    with watching(polling):
        write_images(polling.inbox, 3)
        wait_until(lambda: count(session_factory) == 3, 30, "3 rows")


def test_redis_down_keeps_rows_queued_and_the_watcher_alive(
    settings: Settings, session_factory
) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with watching(dead) as watcher:
        write_images(dead.inbox, 3)
        wait_until(lambda: count(session_factory) == 3, 60, "3 rows recorded")
        wait_until(lambda: watcher.sent == 0 and len(watcher._unsent) == 3, 30, "held back")
    assert count(session_factory, ImageStatus.QUEUED) == 3
    with transaction(session_factory) as session:
        assert all(i.enqueued_at is None for i in session.scalars(select(Image)))
    # Redis back: the next run sends them (the reconciler would too).
    with watching(settings):
        pass


@pytest.mark.parametrize(
    "name", ["with space.jpg", "ünïcødé-名前.jpg", "-leading-dash.jpg", "new\nline.jpg"]
)
def test_odd_filenames(settings: Settings, session_factory, name: str) -> None:
    with watching(settings):
        write_image(settings.inbox / name, 5)
        wait_until(lambda: count(session_factory) == 1, 30, "1 row")
    with transaction(session_factory) as session:
        assert session.scalars(select(ImagePath.path)).one() == str(settings.inbox / name)
