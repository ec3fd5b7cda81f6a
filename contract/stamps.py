"""File stamps: what the file system says of a file (where it is, its size, its last
modification and change times), so that the classify worker need not hash again the bytes the
watcher hashed.

Every write to a file sets its ctime to the kernel's clock, and no user can set ctime. So if a
reader finds the stamp the hasher recorded, nothing has written to the file since, provided
that no write could have landed in the same clock tick as the file's last change after the
hasher began reading (git's "racily clean" index entries). The hasher issues a stamp only
where that is known:

- the file system is local and takes its timestamps from this kernel's clock (ext4, XFS, btrfs,
  tmpfs, f2fs, overlayfs); never for network file systems, FUSE, FAT or exFAT, whose times
  come from another clock or are coarse;
- the file's last change is older than the kernel's coarse clock as the read began
  (``CLOCK_REALTIME_COARSE``, the clock file times are taken from): any later write gets a
  later ctime. Timestamps stored to the second (ext4 with small inodes) must be a whole
  second older;
- nothing about the file moved while it was read.

Anything else gets no stamp, and the reader hashes (``VERIFY_READS=always`` makes it hash every
file). A reader on another host sees another device number: it hashes too.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

#: File systems whose timestamps come from this kernel's clock, to the nanosecond or the second.
KERNEL_CLOCK_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "overlay"}
)
SECOND_NS = 1_000_000_000
MOUNTINFO = "/proc/self/mountinfo"
LINUX_CLOCK_REALTIME_COARSE = 5
MOUNTS_TTL_S = 10.0  # how long what /proc/self/mountinfo said of a device is believed


class BadStamp(ValueError):
    """A stamp in a message that is not five integers."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def encode(self) -> list[int]:
        return [self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns]

    @classmethod
    def decode(cls, value: Any) -> FileStamp:
        if (
            not isinstance(value, list)
            or len(value) != 5
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise BadStamp(f"a file stamp is five integers, not {value!r:.100}")
        return cls(*value)


def kernel_clock_now() -> int | None:
    """The clock file times are stamped from, in ns; None where there is no such clock."""
    if not sys.platform.startswith("linux"):
        return None
    # Python does not name it; Linux's <time.h> does.
    return time.clock_gettime_ns(
        getattr(time, "CLOCK_REALTIME_COARSE", LINUX_CLOCK_REALTIME_COARSE)
    )


def issue(
    before: os.stat_result, after: os.stat_result, read_from_ns: int | None
) -> FileStamp | None:
    """The stamp of a file that was read (and hashed) between ``before`` and ``after``, its
    fstat results, the read having begun at ``read_from_ns`` (:func:`kernel_clock_now`); None
    where a reader could not trust it (see the module's doc)."""
    stamp = FileStamp.of(after)
    if read_from_ns is None or FileStamp.of(before) != stamp:
        return None
    whole_seconds = stamp.ctime_ns % SECOND_NS == 0 and stamp.mtime_ns % SECOND_NS == 0
    clock = read_from_ns - read_from_ns % SECOND_NS if whole_seconds else read_from_ns
    if stamp.ctime_ns >= clock:
        return None
    return stamp if _kernel_clock_filesystem(stamp.device) else None


_known: dict[int, bool] = {}
_known_at = 0.0


def _kernel_clock_filesystem(device: int) -> bool:
    # Read again now and then: an unmounted file system's device number can be reused by a
    # later mount of another kind (an NFS share where a tmpfs was).
    global _known_at
    now = time.monotonic()
    if now - _known_at > MOUNTS_TTL_S:
        _known.clear()
        _known_at = now
    known = _known.get(device)
    if known is None:
        known = _known[device] = (
            filesystem_of(device, _read_mountinfo()) in KERNEL_CLOCK_FILESYSTEMS
        )
    return known


def _read_mountinfo() -> str:
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def filesystem_of(device: int, mountinfo: str) -> str | None:
    """The type of the file system mounted from ``device`` (an ``st_dev``), as
    ``/proc/self/mountinfo`` gives it; None if no mount there has that device."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == wanted and "-" in fields:
            after = fields[fields.index("-") + 1 :]
            return after[0] if after else None
    return None
