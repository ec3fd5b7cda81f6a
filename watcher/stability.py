"""When is a file completely written?

- A close-after-write (inotify) or a rename into the inbox says so at once: no added delay.
- With close events available, a file that is being written (a write event, no close yet) waits
  for its close however long the writer pauses. Only if no event at all arrives for
  ``write_stall_s`` (a close lost to an inotify queue overflow, a writer using mmap) does it fall
  back to the quiet-period rule.
- Otherwise (a bare "created", the polling observer, files found by a rescan), a file is
  complete once its size and mtime have held still for ``quiet_period_s``.
- A file whose own bytes say it is unfinished when hashed (:mod:`imaging.trailers`) is watched
  the same way (``unfinished``): a writer that reopens it per chunk closes it many times.

The tracker is not thread-safe: only the processing thread uses it. The watchdog handler hands
its events over through a queue and does no I/O; the stat calls happen in ``check``.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from watcher.filters import Signature

StatFn = Callable[[str], Signature | None]


class FileState(Enum):
    READY = "ready"  # complete: hash it
    WRITING = "writing"  # open for writing (close events exist): wait for the close
    QUIET = "quiet"  # no event will say when it is done: wait until size and mtime hold still


@dataclass
class _Entry:
    state: FileState
    due: float  # when ``check`` next looks at it (not used while READY)
    since: float = 0.0  # QUIET: signature unchanged since; WRITING: last write event
    signature: Signature | None = None


class StabilityTracker:
    def __init__(
        self,
        quiet_period_s: float,
        *,
        close_events: bool,
        write_stall_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_period_s = quiet_period_s
        self.close_events = close_events
        self.write_stall_s = write_stall_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._ready: dict[str, None] = {}  # insertion-ordered set: oldest first
        self._checks: list[tuple[float, int, str]] = []  # heap of (due, tie-break, path)
        self._seq = itertools.count()

    # --- events --------------------------------------------------------------------------------

    def created(self, path: str) -> None:
        """The path appeared. No event promises to say when it is done, so watch it stand
        still; but a bare "created" never undoes a pending write or a close."""
        if path not in self._entries:
            self._watch_quiet(path, None)

    def written(self, path: str) -> None:
        """Data was written. A file seen as ready before is simply tracked again."""
        self._ready.pop(path, None)
        if self.close_events:
            now = self._clock()
            self._set(path, _Entry(FileState.WRITING, now + self.write_stall_s, since=now))
        else:
            self._watch_quiet(path, None)

    def completed(self, path: str) -> None:
        """Closed after writing, or renamed into the inbox: ready now."""
        self._entries[path] = _Entry(FileState.READY, 0.0)
        self._ready[path] = None

    def unfinished(self, path: str, signature: Signature) -> None:
        """Hashed, but its bytes say more is to come (a writer that closes and reopens it per
        chunk, a file renamed in while still written): watched until it holds still for a
        quiet period, unless an event about it arrived meanwhile (a close still makes it
        ready at once)."""
        if path not in self._entries:
            self._watch_quiet(path, signature)

    def scanned(self, path: str, signature: Signature | None, *, settled: bool = False) -> None:
        """Found by a rescan and not (or not so) in the ledger: complete if ``settled`` (its
        mtime is a quiet period old), else watched for a quiet period. Events already tracking
        the path know better than a snapshot: a writer may just be pausing."""
        if path in self._entries:
            return
        if settled:
            self.completed(path)
        else:
            self._watch_quiet(path, signature)

    def forget(self, path: str) -> None:
        self._entries.pop(path, None)
        self._ready.pop(path, None)

    def forget_tree(self, folder: str) -> None:
        prefix = folder.rstrip(os.sep) + os.sep
        for path in [p for p in self._entries if p.startswith(prefix)]:
            self.forget(path)

    # --- the processing thread -----------------------------------------------------------------

    def check(self, stat: StatFn) -> None:
        """Look at the files whose check is due: stat them, and move those that held still for
        the quiet period to ready. ``stat`` returns None for a path that is gone or unfit."""
        now = self._clock()
        due: dict[str, None] = {}
        while self._checks and self._checks[0][0] <= now:
            when, _, path = heapq.heappop(self._checks)
            entry = self._entries.get(path)
            if entry is not None and entry.state is not FileState.READY and entry.due == when:
                due[path] = None
        for path in due:
            entry = self._entries[path]
            if entry.state is FileState.WRITING:
                # No close and no write for write_stall_s: the close was probably lost.
                self._watch_quiet(path, None)
                continue
            signature = stat(path)
            if signature is None:
                self.forget(path)
            elif signature != entry.signature:
                self._watch_quiet(path, signature)
            elif now - entry.since >= self.quiet_period_s:
                self.completed(path)
            else:
                self._schedule(path, entry, entry.since + self.quiet_period_s)

    def take_ready(self, limit: int) -> list[str]:
        """Up to ``limit`` complete paths, oldest first, no longer tracked."""
        taken = list(itertools.islice(self._ready, limit))
        for path in taken:
            self.forget(path)
        return taken

    def seconds_to_next_check(self) -> float | None:
        """Until ``check`` has something to look at; None when nothing waits for a check."""
        while self._checks:
            when, _, path = self._checks[0]
            entry = self._entries.get(path)
            if entry is not None and entry.state is not FileState.READY and entry.due == when:
                return max(0.0, when - self._clock())
            heapq.heappop(self._checks)  # stale: the entry changed or went away
        return None

    def state(self, path: str) -> FileState | None:
        entry = self._entries.get(path)
        return entry.state if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    # --- internals -----------------------------------------------------------------------------

    def _watch_quiet(self, path: str, signature: Signature | None) -> None:
        """(Re)start the quiet period. Without a signature, the first check (right away) takes
        one; with one (a rescan's stat), the next check is a quiet period later."""
        now = self._clock()
        self._ready.pop(path, None)
        due = now if signature is None else now + self.quiet_period_s
        self._set(path, _Entry(FileState.QUIET, due, since=now, signature=signature))

    def _set(self, path: str, entry: _Entry) -> None:
        self._entries[path] = entry
        self._schedule(path, entry, entry.due)

    def _schedule(self, path: str, entry: _Entry, when: float) -> None:
        entry.due = when
        heapq.heappush(self._checks, (when, next(self._seq), path))
