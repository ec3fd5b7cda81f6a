"""The watcher's own inotify reader (Linux), in place of watchdog's observer there.

watchdog pairs every rename's two halves through a delay queue that it scans from end to end
for each event: a burst of 20,000 files renamed into the inbox spent half the watcher's CPU in
that scan (docs/performance.md, "The watcher"). The watcher needs no pairing: a file moved away
is gone, a file moved in is complete. This reader turns each kernel event into one
``(Kind, path)`` on the watcher's event queue, nothing more:

- close after writing, or moved in: ``COMPLETED``; data written: ``WRITTEN``; created:
  ``CREATED``; deleted or moved away: ``GONE`` (a folder: ``GONE_TREE``, its watches dropped);
- a folder created or moved in is watched, with everything below it, and its files handed over
  as found by a rescan (``SCANNED``) or complete (``FOLDER_IN``: moved in whole);
- hidden folders, symlinked folders and the system's own places are not watched (their files
  are never candidates);
- the kernel's queue overflowing (events lost) asks for a rescan; the inbox itself vanishing
  ends the reader, and the watcher starts a new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable

from watcher.events import EventQueue, Kind
from watcher.filters import Scope, ignored_name

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
MASK = (
    IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
READ_BYTES = 1 << 20
POLL_MS = 200  # how often a blocked reader looks for a stop request


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


class InotifyReader:
    """Reads one inbox's events on a thread of its own (``start``, ``stop``, ``join``)."""

    def __init__(self, scope: Scope, events: EventQueue, on_overflow: Callable[[], None]) -> None:
        libc = _libc()
        if libc is None or not hasattr(libc, "inotify_init1"):
            raise OSError(errno.ENOSYS, "inotify is not available here")
        self._libc = libc
        self._scope = scope
        self._events = events
        self._on_overflow = on_overflow
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1: " + os.strerror(ctypes.get_errno()))
        self._fd = fd
        self._paths: dict[int, bytes] = {}  # watch descriptor -> folder
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._root_wd = self._watch_tree(os.fsencode(scope.inbox), strict=True)

    # --- the observer's interface, as the watcher uses it ----------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def emitters(self) -> list[InotifyReader]:
        return [self]

    # --- watches -------------------------------------------------------------------------------

    def _add(self, folder: bytes) -> int | None:
        wd = self._libc.inotify_add_watch(self._fd, folder, MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOSPC:  # fs.inotify.max_user_watches: let the caller fall back
                raise OSError(code, "inotify watch limit reached (fs.inotify.max_user_watches)")
            return None  # gone meanwhile, or not a folder any more
        self._paths[wd] = folder
        return int(wd)

    def _watch_tree(self, root: bytes, strict: bool = False) -> int | None:
        """Watch ``root`` and every folder below it that may hold candidates."""
        first = self._add(root)
        if first is None and strict:
            raise OSError(errno.ENOENT, f"cannot watch {os.fsdecode(root)}")
        stack = [root] if first is not None else []
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                with contextlib.suppress(OSError):
                    folder_below = entry.is_dir(follow_symlinks=False)
                    if folder_below and self._watchable(entry.path) and self._add(entry.path):
                        stack.append(entry.path)
        return first

    def _watchable(self, folder: bytes) -> bool:
        text = os.fsdecode(folder)
        if ignored_name(os.path.join(text, "x"), self._scope.inbox):
            return False  # hidden, or outside the inbox
        return not (self._scope.own and self._scope.owns(os.path.realpath(text)))

    def _forget_tree(self, folder: bytes) -> None:
        prefix = folder + b"/"
        for wd in [w for w, p in self._paths.items() if p == folder or p.startswith(prefix)]:
            self._libc.inotify_rm_watch(self._fd, wd)
            self._paths.pop(wd, None)

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        try:
            while not self._stopping.is_set():
                if not poller.poll(POLL_MS):
                    continue
                try:
                    data = os.read(self._fd, READ_BYTES)
                except BlockingIOError:
                    continue
                if not self._handle(data):
                    log.warning("the inbox %s went away; its watch ended", self._scope.inbox)
                    return
        except Exception:
            log.exception("the inotify reader failed")

    def _handle(self, data: bytes) -> bool:
        """Turn one read's events into queue entries; False once the inbox itself is gone."""
        offset, end, last = 0, len(data), None
        put = self._events.put
        while offset < end:
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed: events were lost; rescanning")
                self._on_overflow()
                continue
            folder = self._paths.get(wd)
            if mask & IN_IGNORED or (not name and mask & (IN_DELETE_SELF | IN_MOVE_SELF)):
                self._paths.pop(wd, None)
                if wd == self._root_wd:
                    return False
                continue
            if folder is None or not name:
                continue
            path = folder + b"/" + name
            if (mask, path) == last:  # a writer's many IN_MODIFY in one read: one is enough
                continue
            last = (mask, path)
            text = os.fsdecode(path)
            if mask & IN_ISDIR:
                self._folder_event(mask, path, text)
                continue
            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                kind = Kind.COMPLETED
            elif mask & IN_MODIFY:
                kind = Kind.WRITTEN
            elif mask & IN_CREATE:
                kind = Kind.CREATED
            elif mask & (IN_MOVED_FROM | IN_DELETE):
                put(Kind.GONE, text)  # always: it may be tracked under an unfiltered name
                continue
            else:
                continue
            if not ignored_name(text, self._scope.inbox):
                put(kind, text)
        return True

    def _folder_event(self, mask: int, path: bytes, text: str) -> None:
        if mask & (IN_MOVED_FROM | IN_DELETE):
            self._forget_tree(path)
            self._events.put(Kind.GONE_TREE, text)
        elif mask & (IN_CREATE | IN_MOVED_TO) and self._watchable(path):
            self._watch_tree(path)
            # What it already holds was written before its watch: a moved-in folder is complete
            # (FOLDER_IN); a created one is looked at as a rescan would (a quiet period each).
            self._events.put(Kind.FOLDER_IN if mask & IN_MOVED_TO else Kind.SCAN_FOLDER, text)
