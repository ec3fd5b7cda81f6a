"""Giving freed memory back to the operating system when a worker goes idle.

glibc keeps freed heap memory (in per-thread arenas) for reuse, and only returns what sits at
the very top of a heap. A worker that has run a burst through several inference streams and
decode threads would hold its peak footprint for good, and its RSS would wander with the
layout of its last burst. ``malloc_trim(0)`` returns every free page, wherever it is. It runs
once a busy period ends, never while batches run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


@cache
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # pragma: no cover - not glibc (musl, macOS): nothing to do
        return None


def release_free_memory() -> bool:
    """Return free heap pages to the OS. False where the C library cannot (not glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
