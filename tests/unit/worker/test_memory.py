"""A worker gives freed memory back when it goes idle (glibc's malloc_trim), so its RSS after a
burst is what it needs, not the peak of the burst."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from worker.classify.memory import release_free_memory

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


ARENAS_PROBE = """
import ctypes, sys, tempfile, threading
from worker.classify.memory import limit_arenas
if sys.argv[1] != "default":
    assert limit_arenas(int(sys.argv[1]))
held, start = [], threading.Barrier(8)
def allocate():
    start.wait()  # all at once: each new thread would get an arena of its own
    held.append([bytearray(64 * 1024) for _ in range(50)])
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = ctypes.c_void_p(libc.fopen(out.name.encode(), b"w"))
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(out.name).read().count("<heap nr="))
"""


def arenas_used(limit: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ARENAS_PROBE, limit],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    return int(done.stdout.strip())


def test_a_worker_process_allocates_from_the_arenas_it_was_given() -> None:
    assert arenas_used("default") > 2, "the probe's threads did not get arenas of their own"
    assert arenas_used("2") <= 2
