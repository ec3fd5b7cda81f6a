"""Which paths in the inbox are candidates at all.

``ignored_name`` is pure string work, so the watchdog handler may call it on its own thread.
``inspect`` adds lstat/stat calls (never an open), so a FIFO or a device in the inbox cannot
block the watcher.
"""

from __future__ import annotations

import os
import stat
import time
from enum import StrEnum
from typing import NamedTuple

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".swp")
TEMP_PREFIXES = ("~$", ".~")


class Scope(NamedTuple):
    """What the watcher may read: files under ``inbox`` (as configured) that resolve inside
    ``real`` (the inbox with its symlinks resolved) and into none of ``own`` (the resolved
    places the system writes: :func:`contract.layout.own_places`). Picklable, for the hash
    processes."""

    inbox: str
    real: str
    own: tuple[str, ...] = ()

    @classmethod
    def of(cls, inbox: str | os.PathLike[str], own: tuple[str, ...] = ()) -> Scope:
        path = os.path.abspath(inbox)
        return cls(path, os.path.realpath(path), own)

    def owns(self, real_path: str) -> bool:
        """Whether the resolved ``real_path`` is one of the system's own files or in one of
        its folders."""
        return any(real_path == own or real_path.startswith(own + os.sep) for own in self.own)


class Signature(NamedTuple):
    """What a rescan compares with the ledger, and what must hold still for a quiet period."""

    size: int
    mtime_ns: int


class Skip(StrEnum):
    """Why a path is not a file to hash (the value is the wording the log shows)."""

    OUTSIDE = "outside the inbox"
    HIDDEN = "hidden"
    TEMPORARY = "temporary file"
    VANISHED = "vanished"
    SYMLINK_OUT = "symlink pointing outside the inbox"
    BROKEN_SYMLINK = "broken symlink"
    NOT_REGULAR = "not a regular file"
    OWN = "one of the system's own files (data dir, ledger, labeled folder)"


#: What :func:`inspect` finds at a path: its signature, or why it is skipped.
Inspection = Signature | Skip


def ignored_name(path: str | os.PathLike[str], inbox: str | os.PathLike[str]) -> Skip | None:
    """Why the path's name rules it out (outside the inbox, hidden, temporary), or None."""
    path, inbox = os.fspath(path), os.fspath(inbox).rstrip(os.sep)
    if not path.startswith(inbox + os.sep):
        return Skip.OUTSIDE
    parts = path[len(inbox) + 1 :].split(os.sep)
    # Hidden anywhere below the inbox: editors and sync tools stage their files in dot-folders.
    if any(part.startswith(".") for part in parts):
        return Skip.HIDDEN
    name = parts[-1]
    if name.lower().endswith(TEMP_SUFFIXES) or name.startswith(TEMP_PREFIXES):
        return Skip.TEMPORARY
    return None


def inspect(path: str | os.PathLike[str], scope: Scope | str | os.PathLike[str]) -> Inspection:
    """Size and mtime of a file worth hashing, or why it is not one. A symlink is followed
    only when it resolves inside the inbox, and nothing that resolves into the system's own
    places is read."""
    if not isinstance(scope, Scope):
        scope = Scope.of(scope)
    reason = ignored_name(path, scope.inbox)
    if reason:
        return reason
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except OSError:
        return Skip.VANISHED
    # Resolved every time, not only for a symlinked file: a symlinked folder on the way (a
    # polling snapshot follows those) must not lead out of the inbox either.
    real = (
        os.path.realpath(path)
        if stat.S_ISLNK(info.st_mode)
        else os.path.join(real_folder(os.path.dirname(path)), os.path.basename(path))
    )
    if not real.startswith(scope.real.rstrip(os.sep) + os.sep):
        return Skip.SYMLINK_OUT
    if scope.own and scope.owns(real):
        return Skip.OWN
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:
            return Skip.BROKEN_SYMLINK
    if not stat.S_ISREG(info.st_mode):
        return Skip.NOT_REGULAR
    return Signature(info.st_size, info.st_mtime_ns)


#: Resolved folders, briefly: a burst's files share a few folders, and resolving each file's
#: whole path again cost the watcher as much as recording it. A folder swapped for a symlink is
#: seen within REAL_FOLDER_TTL_S.
REAL_FOLDER_TTL_S = 2.0
_real_folders: dict[str, tuple[str, float]] = {}


def real_folder(folder: str) -> str:
    """``os.path.realpath(folder)``, remembered for REAL_FOLDER_TTL_S."""
    now = time.monotonic()
    found = _real_folders.get(folder)
    if found is not None and found[1] > now:
        return found[0]
    real = os.path.realpath(folder)
    if len(_real_folders) > 4096:
        _real_folders.clear()
    _real_folders[folder] = (real, now + REAL_FOLDER_TTL_S)
    return real


def skip_reason(path: str | os.PathLike[str], scope: Scope | str | os.PathLike[str]) -> Skip | None:
    """Why ``path`` is not a file to classify, or None."""
    found = inspect(path, scope)
    return found if isinstance(found, Skip) else None


def walk(root: str, scope: Scope | str) -> list[str]:
    """Candidate paths under ``root`` (a folder in the inbox): regular files and symlinks to
    anything but folders, not descending into hidden or symlinked folders, nor into the
    system's own. Unreadable folders are skipped."""
    if not isinstance(scope, Scope):
        scope = Scope.of(scope)
    inbox = scope.inbox
    found: list[str] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if ignored_name(entry.path, inbox):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not (scope.own and scope.owns(os.path.realpath(entry.path))):
                                stack.append(entry.path)
                        elif entry.is_file() or (entry.is_symlink() and not entry.is_dir()):
                            found.append(entry.path)  # symlinks too: inspect() judges them
                    except OSError:
                        continue
        except OSError:
            continue
    return found
