"""How many files per second one watcher takes in: hashed, recorded in the ledger and sent to
Redis, for a backlog found by the start-up rescan (the watcher's busiest case)::

    python -m bench.watcher_bench --files 20000 [--kb 60] [--set HASH_THREADS=4]

Real files (distinct content), a real SQLite ledger and a real Redis; prints files/s from the
watcher's start to the last item accepted by Redis, and where the watcher's CPU went.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from bench.run import settings_env
from contract.settings import Settings
from db import migrate
from inbox_classifier.redis_server import RedisServer
from watcher.service import Watcher


def make_files(inbox: Path, count: int, kb: int) -> None:
    """``count`` files of ``kb`` KiB, each distinct (random bytes), 1000 per folder."""
    block = os.urandom(kb * 1024)
    for i in range(count):
        folder = inbox / f"d{i // 1000:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:07d}.jpg").write_bytes(i.to_bytes(8, "little") + block)
    old = time.time() - 3600  # complete long ago: the rescan takes them as stable
    for path in inbox.rglob("*.jpg"):
        os.utime(path, (old, old))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.watcher_bench")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--kb", type=int, default=60, help="file size (default 60 KiB)")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE settings")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inbox-watcher-bench-"))
    make_files(root / "inbox", args.files, args.kb)
    redis = RedisServer(root / "redis", persist=False)
    url = redis.start()
    try:
        os.environ.update(settings_env(args.set))
        settings = Settings(
            data_dir=root / "var", inbox=root / "inbox", redis_url=url, quiet_period_s=0.2
        )
        settings.data_dir.mkdir(parents=True)
        migrate.upgrade(settings.db_url)
        watcher = Watcher(settings)
        stop = threading.Event()
        started, cpu0 = time.monotonic(), time.process_time()
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        while watcher.sent < args.files and thread.is_alive():
            time.sleep(0.05)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu0
        stop.set()
        thread.join(60)
    finally:
        redis.stop()
    print(
        f"{args.files} files of {args.kb} KiB: {args.files / seconds:,.0f} files/s "
        f"({seconds:.2f}s; watcher CPU {cpu:.2f}s = {cpu / args.files * 1e6:.0f} µs/file; "
        f"hash threads {settings.hash_threads}, {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
