"""Which paths in the inbox are candidates at all.

``ignored_name`` is pure string work, so the watchdog handler may call it on its own thread.
``inspect`` adds lstat/stat calls (never an open), so a FIFO or a device in the inbox cannot
block the watcher.
"""

from __future__ import annotations

import os
import stat
from enum import StrEnum
from typing import NamedTuple

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".swp")
TEMP_PREFIXES = ("~$", ".~")


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


def inspect(
    path: str | os.PathLike[str],
    inbox: str | os.PathLike[str],
    inbox_real: str | None = None,
) -> Inspection:
    """Size and mtime of a file worth hashing, or why it is not one.

    ``inbox_real`` is the inbox with its symlinks resolved (computed here when not given); a
    symlink is followed only when it resolves inside it.
    """
    reason = ignored_name(path, inbox)
    if reason:
        return reason
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except OSError:
        return Skip.VANISHED
    # Resolved every time, not only for a symlinked file: a symlinked folder on the way (a
    # polling snapshot follows those) must not lead out of the inbox either.
    real_inbox = (inbox_real or os.path.realpath(inbox)).rstrip(os.sep) + os.sep
    if not os.path.realpath(path).startswith(real_inbox):
        return Skip.SYMLINK_OUT
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:
            return Skip.BROKEN_SYMLINK
    if not stat.S_ISREG(info.st_mode):
        return Skip.NOT_REGULAR
    return Signature(info.st_size, info.st_mtime_ns)


def skip_reason(
    path: str | os.PathLike[str], inbox: str | os.PathLike[str], inbox_real: str | None = None
) -> Skip | None:
    """Why ``path`` is not a file to classify, or None."""
    found = inspect(path, inbox, inbox_real)
    return found if isinstance(found, Skip) else None


def walk(root: str, inbox: str) -> list[str]:
    """Candidate paths under ``root`` (a folder in the inbox): regular files and symlinks to
    anything but folders, not descending into hidden or symlinked folders. Unreadable folders
    are skipped."""
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
                            stack.append(entry.path)
                        elif entry.is_file() or (entry.is_symlink() and not entry.is_dir()):
                            found.append(entry.path)  # symlinks too: inspect() judges them
                    except OSError:
                        continue
        except OSError:
            continue
    return found
