"""The watchdog side: which observer, and a handler that turns its events into (kind, path)
pairs on a queue. The handler runs on the observer's thread, so it does no I/O at all: the
processing thread stats and hashes."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable
from enum import Enum
from typing import Any, Protocol

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from watcher.filters import ignored_name

log = logging.getLogger(__name__)


class Kind(Enum):
    CREATED = "created"  # appeared, nothing promises a close: quiet period
    WRITTEN = "written"  # data written: wait for the close (or a quiet period when polling)
    COMPLETED = "completed"  # closed after writing, or renamed in: ready now
    GONE = "gone"  # deleted or moved away
    GONE_TREE = "gone-tree"  # a folder deleted or moved away
    FOLDER_IN = "folder-in"  # a folder moved in whole: its files are complete
    SCAN_FOLDER = "scan-folder"  # a folder created: its files as a rescan finds them
    SCANNED = "scanned"  # a rescan found it unknown, changed recently: quiet period
    SETTLED = "settled"  # a rescan found it unknown, untouched for a quiet period: complete
    SCAN_DONE = "scan-done"  # a rescan has queued everything it found


Event = tuple[Kind, str]


class Observing(Protocol):
    """What the watcher needs of an observer: watchdog's, or its own inotify reader."""

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    @property
    def emitters(self) -> Iterable[Any]: ...


class EventQueue:
    """Many producers (observer, scanner), one consumer (the processing thread)."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.wake = threading.Event()

    def put(self, kind: Kind, path: str) -> None:
        self._items.put((kind, path))
        self.wake.set()

    def drain(self) -> list[Event]:
        items: list[Event] = []
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)


#: The events the handler acts on. Scheduling with only these keeps the opens and
#: closes-without-write out of the inotify mask, and the watcher's own reads of every file it
#: hashes (two events each) out of its event thread.
HANDLED_EVENTS: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileModifiedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


class InboxHandler(FileSystemEventHandler):
    def __init__(self, inbox: str, events: EventQueue) -> None:
        self._inbox = inbox
        self._events = events

    def _put(self, kind: Kind, path: str | bytes) -> None:
        text = _text(path)
        # Deletions always pass: the path may have been tracked under an unfiltered name.
        if kind in (Kind.GONE, Kind.GONE_TREE) or not ignored_name(text, self._inbox):
            self._events.put(kind, text)

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Exact types: opened / closed-no-write / attrib / dir-modified events (our own reads
        # among them) must not count as writes.
        match event:
            case FileClosedEvent():
                self._put(Kind.COMPLETED, event.src_path)
            case FileModifiedEvent():
                self._put(Kind.WRITTEN, event.src_path)
            case FileCreatedEvent():
                self._put(Kind.CREATED, event.src_path)
            case FileMovedEvent():
                # With full inotify events an unmatched side is "": moved in from or out to
                # somewhere unwatched.
                if event.src_path:
                    self._put(Kind.GONE, event.src_path)
                if event.dest_path:
                    self._put(Kind.COMPLETED, event.dest_path)
            case DirMovedEvent():
                if event.src_path:
                    self._put(Kind.GONE_TREE, event.src_path)
                if event.dest_path:
                    self._put(Kind.FOLDER_IN, event.dest_path)
            case FileDeletedEvent():
                self._put(Kind.GONE, event.src_path)
            case DirDeletedEvent():
                self._put(Kind.GONE_TREE, event.src_path)
            case _:
                # A created folder needs nothing: watchdog reports the files already in it
                # (inotify adds the watch, then lists it), and later ones get their own events.
                pass


def make_observer(polling: bool, poll_interval_s: float) -> tuple[BaseObserver, bool]:
    """The observer to use, and whether it reports close-after-write events."""
    if polling:
        return PollingObserver(timeout=poll_interval_s), False
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux: FSEvents / kqueue / ReadDirectoryChangesW, no close events
        return Observer(), False
    # Full events: a file renamed in from outside the inbox is a move (complete at once), not a
    # bare "created" that would have to sit out a quiet period.
    return InotifyObserver(generate_full_events=True), True
