"""Which paths in the inbox are candidates at all. Pure path logic plus one lstat."""

from __future__ import annotations

import os
import stat
from pathlib import Path

TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", ".swp")
TEMP_PREFIXES = ("~$", ".~")


def ignored_name(path: Path, inbox: Path) -> str | None:
    """Why the path's name rules it out (hidden or temporary), or None."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return "outside the inbox"
    if any(part.startswith(".") for part in parts):
        return "hidden"
    name = parts[-1] if parts else ""
    if name.lower().endswith(TEMP_SUFFIXES) or name.startswith(TEMP_PREFIXES):
        return "temporary file"
    return None


def skip_reason(path: Path, inbox_real: Path) -> str | None:
    """Why ``path`` is not a file to classify, or None. Never opens the file, so a FIFO or a
    device in the inbox cannot hang the watcher."""
    reason = ignored_name(path, inbox_real)
    if reason:
        return reason
    try:
        info = os.lstat(path)
    except OSError:
        return "vanished"
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(inbox_real):
            return "symlink pointing outside the inbox"
        try:
            info = os.stat(path)
        except OSError:
            return "broken symlink"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return None
