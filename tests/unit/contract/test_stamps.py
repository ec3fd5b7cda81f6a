"""File stamps: when the watcher may hand one to the worker, and how a reader tells a file
written to since (contract.stamps)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from contract import stamps
from contract.files import read_stamped
from contract.messages import BadMessage, WorkItem, decode_classify, encode_classify
from contract.stamps import FileStamp, filesystem_of, issue

SHA = "ab" * 32

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:31 / /mnt/share rw,relatime shared:20 master:3 - nfs4 server:/export rw,vers=4.2
36 22 0:32 / /media/stick rw,relatime - vfat /dev/sdb1 rw
"""


def test_the_file_system_is_read_from_mountinfo_optional_fields_and_all() -> None:
    assert filesystem_of(os.makedev(8, 1), MOUNTINFO) == "ext4"
    assert filesystem_of(os.makedev(0, 31), MOUNTINFO) == "nfs4"
    assert filesystem_of(os.makedev(0, 32), MOUNTINFO) == "vfat"
    assert filesystem_of(os.makedev(9, 9), MOUNTINFO) is None


def _stat(path: Path) -> os.stat_result:
    return os.stat(path)


def local_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 1000)
    if not stamps._kernel_clock_filesystem(os.stat(path).st_dev):
        pytest.skip("the test folder is not on a local file system with kernel timestamps")
    return path


def test_a_stamp_only_for_a_file_last_changed_before_the_read_began(tmp_path: Path) -> None:
    path = local_file(tmp_path)
    st = _stat(path)
    # The read began in the same tick as the last change: a write could follow unseen.
    assert issue(st, st, st.st_ctime_ns) is None
    assert issue(st, st, st.st_ctime_ns - 1) is None
    assert issue(st, st, st.st_ctime_ns + 1) == FileStamp.of(st)
    assert issue(st, st, None) is None  # no kernel clock to compare with


def test_no_stamp_for_a_file_that_moved_while_it_was_read(tmp_path: Path) -> None:
    path = local_file(tmp_path)
    before = _stat(path)
    time.sleep(0.02)
    path.write_bytes(b"y" * 1000)
    after = _stat(path)
    assert issue(before, after, after.st_ctime_ns + 1) is None


def test_timestamps_to_the_second_need_a_whole_second(tmp_path: Path) -> None:
    path = local_file(tmp_path)
    st = _stat(path)
    # As ext4 with small inodes stores them: whole seconds.
    fields = dict(st_dev=st.st_dev, st_ino=st.st_ino, st_size=st.st_size)
    whole = cast(
        os.stat_result, SimpleNamespace(**fields, st_mtime_ns=5 * 10**9, st_ctime_ns=7 * 10**9)
    )
    assert whole.st_ctime_ns == 7 * 10**9
    assert issue(whole, whole, 7 * 10**9 + 999_999_999) is None  # same second
    assert issue(whole, whole, 8 * 10**9) is not None


def test_no_stamp_on_a_file_system_with_another_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = local_file(tmp_path)
    st = _stat(path)
    monkeypatch.setattr(stamps, "_kernel_clock_filesystem", lambda device: False)
    assert issue(st, st, st.st_ctime_ns + 1) is None


def test_a_rewrite_of_the_same_size_with_its_old_mtime_changes_the_stamp(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 1000)
    first_data, first = read_stamped(str(path), 10_000)
    time.sleep(0.02)  # a later tick of the kernel's clock
    with open(path, "r+b") as f:
        f.seek(500)
        f.write(b"y")
    os.utime(path, ns=(first.mtime_ns, first.mtime_ns))  # mtime can be put back; ctime cannot
    data, stamp = read_stamped(str(path), 10_000)
    assert (stamp.size, stamp.mtime_ns) == (first.size, first.mtime_ns)
    assert data != first_data and stamp != first


def test_stamps_travel_in_messages_and_bad_ones_are_refused() -> None:
    stamp = FileStamp(1, 2, 3, 4, 5)
    items = [WorkItem("/in/a.jpg", SHA, stamp), WorkItem("/in/b.jpg", SHA)]
    assert decode_classify(encode_classify(items)) == items
    payload = encode_classify(items)
    payload["items"][0]["stamp"] = [1, 2, "3", 4, 5]
    with pytest.raises(BadMessage, match="five integers"):
        decode_classify(payload)
