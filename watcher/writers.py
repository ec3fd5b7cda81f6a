"""Whether some process still has a file open for writing, where the platform can tell (Linux's
/proc). It walks every process's descriptors, so the watcher asks it only of the rare file whose
bytes look unfinished after a quiet period (a writer pausing with the file open), never per file.
"""

from __future__ import annotations

import os

PROC = "/proc"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def open_for_writing(path: str) -> bool | None:
    """True if a process holds ``path`` open for writing, False if none does, None where this
    platform cannot tell (no /proc) or ``path`` is gone."""
    if not os.path.isdir(os.path.join(PROC, "self", "fd")):
        return None
    try:
        target = os.stat(path)
    except OSError:
        return None
    wanted = (target.st_dev, target.st_ino)
    for pid in os.listdir(PROC):
        if not pid.isdigit():
            continue
        fd_dir = os.path.join(PROC, pid, "fd")
        try:
            descriptors = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in descriptors:
            try:
                info = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == wanted and _writable(pid, fd):
                return True
    return False


def _writable(pid: str, fd: str) -> bool:
    try:
        with open(os.path.join(PROC, pid, "fdinfo", fd), encoding="ascii") as handle:
            for line in handle:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & _WRITE_FLAGS)
    except (OSError, ValueError, IndexError):
        pass
    return False
