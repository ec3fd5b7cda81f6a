"""`up` watches the free space where the system writes (the data dir: ledger, Redis's append-only
file, logs, models; and a SQLite ledger elsewhere). A full disk is named on the terminal once,
"disk full at <path> (N MB free): waiting", and again when there is room; while it lasts `up`
restarts no child (a worker that Redis's refusals stopped would only crash again), the workers'
and the watcher's database writes retry with backoff, and nothing is marked failed for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("inbox_classifier.up")

#: Below this, SQLite's WAL, Redis's append-only file and the logs start failing their writes.
FULL_BELOW_BYTES = 16 << 20
#: Room enough again: more than the "full" mark, so a disk at the edge is not said twice a second.
ROOM_ABOVE_BYTES = 32 << 20


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s file system; None if unknown."""
    try:
        found = os.statvfs(path)
    except OSError:
        return None
    return found.f_bavail * found.f_frsize


@dataclass
class DiskWatch:
    """Checked on `up`'s supervising loop."""

    places: list[Path]
    full_below: int = FULL_BELOW_BYTES
    room_above: int = ROOM_ABOVE_BYTES
    full_at: Path | None = field(default=None, init=False)

    @property
    def full(self) -> bool:
        return self.full_at is not None

    def check(self) -> bool:
        """Whether a place is full now; says so (and when it has room again) on the log."""
        if self.full_at is not None:
            free = free_bytes(self.full_at)
            if free is None or free > self.room_above:
                log.info("disk has room again at %s (%s free): resuming", self.full_at, _mb(free))
                self.full_at = None
            return self.full
        for place in self.places:
            free = free_bytes(place)
            if free is not None and free < self.full_below:
                self.full_at = place
                log.error(
                    "disk full at %s (%s free): waiting; writes retry and no child restarts "
                    "until there is room (free some space there)",
                    place,
                    _mb(free),
                )
                break
        return self.full


def _mb(free: int | None) -> str:
    return "unknown" if free is None else f"{free / (1 << 20):.0f} MB"
