"""Files whose bytes say they are unfinished when hashed (:mod:`imaging.trailers`): a writer that
closes and reopens a file per chunk (``dd oflag=append``, appending copy tools) or a file
renamed into the inbox while still being written. Each close would otherwise record a partial
content as an image of its own, which then fails as corrupt.

Such a file is recorded once its size and mtime have held still for the quiet period and no
process has it open for writing (where the platform can tell: :mod:`watcher.writers`); a writer
that holds it open without writing for ``rescan_interval_s`` no longer counts. Then it is
recorded as it is: a truly truncated file fails once, with its reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from contract.paths import shown
from contract.records import SeenFile
from watcher.filters import Signature
from watcher.stability import StabilityTracker
from watcher.writers import open_for_writing

log = logging.getLogger(__name__)


class UnfinishedFiles:
    """Used by the watcher's processing thread only."""

    def __init__(
        self,
        quiet_period_s: float,
        writer_patience_s: float,
        clock: Callable[[], float] = time.monotonic,
        writing: Callable[[str], bool | None] = open_for_writing,
    ) -> None:
        self.quiet_period_s = quiet_period_s
        self.writer_patience_s = writer_patience_s
        self._clock = clock
        self._writing = writing
        self._held: dict[str, tuple[Signature, float]] = {}  # path -> (signature, held since)

    def done_waiting(self, found: SeenFile, tracker: StabilityTracker) -> bool:
        """Whether ``found`` (hashed, its bytes looking unfinished) has waited enough; if not,
        ``tracker`` watches it again."""
        signature = Signature(found.size, found.mtime_ns)
        now = self._clock()
        before = self._held.get(found.path)
        if before is None or before[0] != signature:
            if before is None:
                log.info(
                    "waiting for %s: its bytes say it is unfinished (a writer still at it?)",
                    shown(found.path),
                )
            self._held[found.path] = (signature, now)
            tracker.unfinished(found.path, signature)
            return False
        held = now - before[1]
        if held < self.quiet_period_s or (
            held < self.writer_patience_s and self._writing(found.path)
        ):
            tracker.unfinished(found.path, signature)
            return False
        # The writer may have written and closed it between the hash and that look at the
        # writers: what was hashed is then not the file any more, and must not be recorded.
        now_there = _signature(found.path)
        if now_there is not None and now_there != signature:
            self._held[found.path] = (now_there, now)
            tracker.unfinished(found.path, now_there)
            return False
        return True

    def forget(self, path: str) -> None:
        self._held.pop(path, None)

    def forget_tree(self, folder: str) -> None:
        prefix = folder.rstrip(os.sep) + os.sep
        for path in [p for p in self._held if p.startswith(prefix)]:
            del self._held[path]

    def __len__(self) -> int:
        return len(self._held)


def _signature(path: str) -> Signature | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return Signature(stat.st_size, stat.st_mtime_ns)
