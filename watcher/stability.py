"""When is a file completely written?

- An inotify close-after-write (or a rename into the inbox) says so at once: no added delay.
  A file being written (a write event and no close yet) is never taken, however long the
  writer pauses.
- Without such events (polling observer, network mounts, files found by a rescan, hard links),
  a file is complete once its size and mtime have held for ``quiet_period`` seconds.

The tracker is fed from the observer's thread, which must not do I/O: ``notify`` only records
the event; ``take_ready`` (the processing thread) does the stat calls.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class FileState(Enum):
    COMPLETE = "complete"  # closed after writing, or renamed in
    WRITING = "writing"  # open for writing (close-write events exist): wait for the close
    SEEN = "seen"  # no event will say when it is done: wait for a quiet period


@dataclass
class _Entry:
    state: FileState
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last poll
    stable_since: float = 0.0


class StabilityTracker:
    def __init__(self, quiet_period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._quiet = quiet_period
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._wake = threading.Condition()

    def notify(self, path: str, state: FileState) -> None:
        """An event for ``path``."""
        with self._wake:
            current = self._entries.get(path)
            if state is FileState.SEEN and current is not None and current.state is not state:
                return  # a bare "created" does not undo a pending write or a close
            # A fresh entry each time: a write after a close makes the file pending again.
            self._entries[path] = _Entry(state)
            self._wake.notify()

    def forget(self, path: str) -> None:
        with self._wake:
            self._entries.pop(path, None)

    def pending(self) -> int:
        with self._wake:
            return len(self._entries)

    def wait(self, timeout: float) -> None:
        """Sleep until an event arrives or ``timeout`` passes."""
        with self._wake:
            if not any(e.state is FileState.COMPLETE for e in self._entries.values()):
                self._wake.wait(timeout)

    def take_ready(self, limit: int = 512) -> list[str]:
        """Paths complete now (at most ``limit``), removed from the tracker."""
        now = self._clock()
        with self._wake:
            candidates = list(self._entries.items())
        ready: list[tuple[str, _Entry]] = []
        for path, entry in candidates:
            if len(ready) >= limit:
                break
            if entry.state is FileState.COMPLETE:
                ready.append((path, entry))
                continue
            try:
                info = os.stat(path)
            except OSError:
                ready.append((path, entry))  # gone: let the caller drop it
                continue
            if entry.state is FileState.WRITING:
                continue
            signature = (info.st_size, info.st_mtime_ns)
            if signature != entry.signature:
                entry.signature, entry.stable_since = signature, now
            elif now - entry.stable_since >= self._quiet:
                ready.append((path, entry))
        with self._wake:
            taken = []
            for path, entry in ready:
                if self._entries.get(path) is entry:  # no newer event meanwhile
                    del self._entries[path]
                    taken.append(path)
        return taken
