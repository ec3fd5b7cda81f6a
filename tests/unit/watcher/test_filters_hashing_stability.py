"""The watcher's parts on their own: filters, hashing, the stability tracker (with a fake clock;
the files and their stat calls are real) and the backoff."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from contract.backoff import Backoff
from tests.helpers.images import write_image
from watcher.filters import Signature, ignored_name, inspect, skip_reason, walk
from watcher.hashing import CHUNK, ChangedWhileReading, NotHashable, hash_file
from watcher.stability import FileState, StabilityTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def real_stat(inbox: Path):  # type: ignore[no-untyped-def]
    def stat(path: str) -> Signature | None:
        found = inspect(path, inbox)
        return found if isinstance(found, Signature) else None

    return stat


# --- filters -------------------------------------------------------------------------------------


def test_hidden_and_temporary_names_are_ignored(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    cases = {
        "ok.jpg": None,
        "sub/dir/ok.jpg": None,
        ".hidden.jpg": "hidden",
        ".hidden-dir/x.jpg": "hidden",
        "a/.git/b/x.jpg": "hidden",
        "dl.jpg.part": "temporary file",
        "a.TMP": "temporary file",
        "b.jpg.crdownload": "temporary file",
        "~$report.jpg": "temporary file",
        "x.jpg.swp": "temporary file",
    }
    for name, reason in cases.items():
        assert ignored_name(inbox / name, inbox) == reason, name
        write_image(inbox / name, 1, fmt="JPEG")
        assert skip_reason(inbox / name, inbox) == reason, name
    assert ignored_name(tmp_path / "elsewhere.jpg", inbox) == "outside the inbox"
    assert ignored_name(tmp_path / "inbox-sibling" / "x.jpg", inbox) == "outside the inbox"


def test_special_files_are_never_opened(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    fifo = inbox / "pipe.jpg"
    os.mkfifo(fifo)
    assert skip_reason(fifo, inbox) == "not a regular file"
    # Even if something hands hash_file a FIFO (swapped in after the stat), it does not block.
    outcome: list[BaseException] = []

    def hash_it() -> None:
        try:
            hash_file(str(fifo))
        except NotHashable as exc:
            outcome.append(exc)

    thread = threading.Thread(target=hash_it, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "hash_file blocked on a FIFO"
    assert outcome and "regular" in str(outcome[0])
    (inbox / "folder.jpg").mkdir()
    assert skip_reason(inbox / "folder.jpg", inbox) == "not a regular file"


def test_symlinks_are_followed_only_inside_the_inbox(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    target = write_image(inbox / "ok.jpg", 2)
    outside = write_image(tmp_path / "outside" / "secret.jpg", 1)
    (inbox / "escape.jpg").symlink_to(outside)
    (inbox / "inside.jpg").symlink_to(target)
    (inbox / "dangling.jpg").symlink_to(inbox / "missing.jpg")
    (inbox / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    assert skip_reason(inbox / "escape.jpg", inbox) == "symlink pointing outside the inbox"
    assert skip_reason(inbox / "linked-dir" / "secret.jpg", inbox) == (
        "symlink pointing outside the inbox"
    )
    assert inspect(inbox / "inside.jpg", inbox) == inspect(target, inbox)
    assert skip_reason(inbox / "dangling.jpg", inbox) == "broken symlink"
    assert skip_reason(inbox / "missing.jpg", inbox) == "vanished"
    # The walk lists symlinks (inspect decides) but never descends into a symlinked folder.
    found = {os.path.relpath(p, inbox) for p in walk(str(inbox), str(inbox))}
    assert found == {"ok.jpg", "escape.jpg", "inside.jpg", "dangling.jpg"}


def test_walk_is_recursive_and_skips_hidden_folders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for rel in ["a.jpg", "x/b.jpg", "x/y/z/c.jpg", ".cache/d.jpg", "x/.e.jpg", "x/f.part"]:
        write_image(inbox / rel, 1, fmt="JPEG")
    found = sorted(os.path.relpath(p, inbox) for p in walk(str(inbox), str(inbox)))
    assert found == ["a.jpg", "x/b.jpg", "x/y/z/c.jpg"]


# --- hashing -------------------------------------------------------------------------------------


def test_hash_streams_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * CHUNK + 12345)
    path.write_bytes(data)
    seen = hash_file(str(path))
    info = path.stat()
    assert seen.sha256 == hashlib.sha256(data).hexdigest()
    assert (seen.size, seen.mtime_ns, seen.path) == (len(data), info.st_mtime_ns, str(path))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert hash_file(str(empty)).sha256 == hashlib.sha256(b"").hexdigest()


def test_hash_of_a_vanished_or_unreadable_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(NotHashable):
        hash_file(str(tmp_path / "gone.jpg"))
    assert not issubclass(NotHashable, ChangedWhileReading)


# --- the stability tracker -----------------------------------------------------------------------


def test_close_after_write_is_ready_at_once(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    tracker = StabilityTracker(5.0, close_events=True, clock=FakeClock())
    tracker.created(path)
    tracker.written(path)
    tracker.check(real_stat(tmp_path))
    assert tracker.take_ready(10) == []
    tracker.completed(path)
    assert tracker.take_ready(10) == [path]
    assert len(tracker) == 0


def test_a_rename_into_the_inbox_is_ready_at_once_even_without_close_events(
    tmp_path: Path,
) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    tracker = StabilityTracker(5.0, close_events=False, clock=FakeClock())
    tracker.completed(path)
    tracker.created(path)  # a late "created" changes nothing
    assert tracker.take_ready(10) == [path]


def test_created_only_file_is_ready_after_the_quiet_period(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    clock = FakeClock()
    tracker = StabilityTracker(1.0, close_events=True, clock=clock)
    stat = real_stat(tmp_path)
    tracker.created(path)  # e.g. a hard link, or a file in a folder created just now
    tracker.check(stat)  # first look: remember size and mtime
    assert tracker.take_ready(10) == []
    assert tracker.seconds_to_next_check() == pytest.approx(1.0)
    clock.now += 0.99
    tracker.check(stat)
    assert tracker.take_ready(10) == []
    clock.now += 0.01
    tracker.check(stat)
    assert tracker.take_ready(10) == [path]


def test_a_growing_file_restarts_the_quiet_period(tmp_path: Path) -> None:
    target = write_image(tmp_path / "a.jpg", 1)
    path = str(target)
    clock = FakeClock()
    tracker = StabilityTracker(1.0, close_events=False, clock=clock)
    stat = real_stat(tmp_path)
    tracker.created(path)
    tracker.check(stat)
    clock.now += 1.0
    with open(target, "ab") as handle:  # grew without an event reaching us (polling gap)
        handle.write(b"more")
    tracker.check(stat)
    assert tracker.take_ready(10) == []  # changed: the quiet period starts again
    clock.now += 0.6
    tracker.check(stat)
    assert tracker.take_ready(10) == []
    clock.now += 0.4
    tracker.check(stat)
    assert tracker.take_ready(10) == [path]


def test_polling_write_events_restart_the_quiet_period(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    clock = FakeClock()
    tracker = StabilityTracker(1.0, close_events=False, clock=clock)
    stat = real_stat(tmp_path)
    tracker.created(path)
    tracker.check(stat)
    clock.now += 0.8
    tracker.written(path)
    tracker.check(stat)
    clock.now += 0.8
    tracker.check(stat)
    assert tracker.take_ready(10) == []
    clock.now += 0.2
    tracker.check(stat)
    assert tracker.take_ready(10) == [path]


def test_a_file_being_written_waits_for_its_close_however_long_the_pause(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    clock = FakeClock()
    tracker = StabilityTracker(0.3, close_events=True, write_stall_s=300.0, clock=clock)
    stat = real_stat(tmp_path)
    tracker.created(path)
    tracker.written(path)
    tracker.created(path)  # a late "created" does not undo the write
    for _ in range(29):
        clock.now += 10
        tracker.check(stat)
        assert tracker.take_ready(10) == []
        assert tracker.state(path) is FileState.WRITING
    tracker.completed(path)
    assert tracker.take_ready(10) == [path]


def test_a_lost_close_falls_back_to_the_quiet_period_after_the_stall_time(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    clock = FakeClock()
    tracker = StabilityTracker(0.3, close_events=True, write_stall_s=60.0, clock=clock)
    stat = real_stat(tmp_path)
    tracker.written(path)
    clock.now += 59
    tracker.check(stat)
    assert tracker.state(path) is FileState.WRITING
    clock.now += 1
    tracker.check(stat)
    assert tracker.state(path) is FileState.QUIET
    tracker.check(stat)
    clock.now += 0.3
    tracker.check(stat)
    assert tracker.take_ready(10) == [path]


def test_a_file_modified_after_it_was_ready_is_tracked_again(tmp_path: Path) -> None:
    path = str(write_image(tmp_path / "a.jpg", 1))
    tracker = StabilityTracker(1.0, close_events=True, clock=FakeClock())
    tracker.completed(path)
    tracker.written(path)  # before it was taken: no longer ready
    assert tracker.take_ready(10) == []
    tracker.completed(path)
    assert tracker.take_ready(10) == [path]
    tracker.written(path)  # after it was taken: tracked again, from scratch
    assert tracker.state(path) is FileState.WRITING
    tracker.completed(path)
    assert tracker.take_ready(10) == [path]


def test_rescan_candidates_deletions_and_bursts(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(1.0, close_events=True, clock=clock)
    stat = real_stat(tmp_path)
    first = str(write_image(tmp_path / "a.jpg", 1))
    signature = stat(first)
    assert signature is not None
    tracker.scanned(first, signature)
    assert tracker.seconds_to_next_check() == pytest.approx(1.0)  # already has a signature
    clock.now += 1.0
    tracker.check(stat)
    assert tracker.take_ready(10) == [first]

    old = str(write_image(tmp_path / "old.jpg", 3))
    tracker.scanned(old, None, settled=True)  # untouched for a quiet period: complete
    assert tracker.take_ready(10) == [old]
    tracker.written(old)  # ... unless events say a writer is at it (pausing, say)
    tracker.scanned(old, None, settled=True)
    assert tracker.state(old) is FileState.WRITING
    tracker.forget(old)

    gone = write_image(tmp_path / "gone.jpg", 2)
    tracker.created(str(gone))
    gone.unlink()
    tracker.check(stat)
    assert len(tracker) == 0  # vanished: forgotten

    paths = [str(tmp_path / "sub" / f"{i}.jpg") for i in range(5)]
    for path in paths:
        tracker.completed(path)
    assert tracker.take_ready(2) == paths[:2]  # oldest first, in bursts
    tracker.forget_tree(str(tmp_path / "sub"))
    assert tracker.take_ready(10) == [] and len(tracker) == 0


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_resets() -> None:
    clock = FakeClock()
    backoff = Backoff(base=1.0, cap=8.0, clock=clock)
    delays = [backoff.failed() for _ in range(8)]
    assert all(0.5 * min(8, 2**i) <= d <= min(8, 2**i) for i, d in enumerate(delays))
    assert backoff.remaining() == pytest.approx(delays[-1])
    clock.now += delays[-1]
    assert backoff.remaining() == 0
    backoff.failed()
    backoff.succeeded()
    assert backoff.remaining() == 0 and backoff.failures == 0
