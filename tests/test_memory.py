"""A worker gives freed memory back when it goes idle (glibc's malloc_trim), so its RSS after a
burst is what it needs, not the peak of the burst."""

from __future__ import annotations

import sys

import psutil
import pytest

from worker.memory import release_free_memory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc only")


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_free_pages_below_a_live_block_go_back_to_the_os() -> None:
    # 64 KiB blocks come from the heap (below glibc's mmap threshold). Keeping the last one
    # alive pins the top of the heap: free() alone can return nothing.
    blocks = [bytearray(64 * 1024) for _ in range(3000)]
    pinned = blocks[-1]
    del blocks
    before = rss_mib()
    assert release_free_memory()
    after = rss_mib()
    assert pinned[0] == 0
    assert before - after > 100, f"RSS {before:.0f} -> {after:.0f} MiB"
