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
from functools import cache
from typing import Any


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


#: glibc's mallopt parameter for the most malloc arenas.
_M_ARENA_MAX = -8


def limit_arenas(count: int) -> bool:
    """Cap the malloc arenas of this process, as MALLOC_ARENA_MAX does, for threads that first
    allocate after the call. False where the C library has no such setting.

    glibc gives each new thread its own arena, up to 8 per core; a worker's threads (streams,
    decoders, writer, Celery's) then each keep the free memory of their last big batch, and
    the RSS drifts up in steps (measured in docs/performance.md, "Memory")."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, count))
