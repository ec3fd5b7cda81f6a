"""The watchdog handler: translates events into tracker notifications. Runs on the observer's
thread, so it does no I/O at all."""

from __future__ import annotations

import queue

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from watcher.stability import FileState, StabilityTracker


def _text(path: str | bytes) -> str:
    return path.decode(errors="surrogateescape") if isinstance(path, bytes) else path


class InboxHandler(FileSystemEventHandler):
    def __init__(
        self,
        tracker: StabilityTracker,
        new_dirs: queue.SimpleQueue[str],
        close_events: bool,
    ) -> None:
        self._tracker = tracker
        self._new_dirs = new_dirs
        # With inotify a write is followed by a close-write event; a polling observer has none.
        self._on_write = FileState.WRITING if close_events else FileState.SEEN

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self._tracker.notify(_text(event.src_path), FileState.COMPLETE)
        elif isinstance(event, FileMovedEvent):
            self._tracker.notify(_text(event.dest_path), FileState.COMPLETE)
        elif isinstance(event, FileModifiedEvent):
            self._tracker.notify(_text(event.src_path), self._on_write)
        elif isinstance(event, FileCreatedEvent):
            self._tracker.notify(_text(event.src_path), FileState.SEEN)
        elif isinstance(event, DirMovedEvent):
            # A folder moved in brings files that will get no events of their own.
            self._new_dirs.put(_text(event.dest_path))
        elif isinstance(event, DirCreatedEvent):
            self._new_dirs.put(_text(event.src_path))
