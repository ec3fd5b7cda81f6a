"""The ledger's batch write alone: :func:`db.ledger.save_batch` (what a worker's writer thread
commits per batch) and :func:`db.ledger.record_files` (what the watcher commits per burst), timed
per image on SQLite and PostgreSQL, at several batch sizes, on a ledger that already holds
``--rows`` images.

    python -m bench.ledger_write                 # docs/performance.md, "The ledger's writes"
    python -m bench.ledger_write --rows 2000 --batches 256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import cpu_model
from contract.records import Classified, LabelScore, SeenFile
from db import migrate
from db.batch_write import save_batch
from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import record_files
from db.versions import ensure_base_model

CLASSES = [f"class-{i}" for i in range(10)]


def _seen(n: int, salt: str) -> list[SeenFile]:
    return [
        SeenFile(
            path=f"/inbox/{salt}/img_{i:07d}.jpg",
            sha256=hashlib.sha256(f"{salt}-{i}".encode()).hexdigest(),
            size=60_000,
            mtime_ns=1_700_000_000_000_000_000 + i,
        )
        for i in range(n)
    ]


def _classified(files: Sequence[SeenFile]) -> list[Classified]:
    topk = [
        LabelScore(label=c, confidence=round(0.5 / (k + 1), 6)) for k, c in enumerate(CLASSES[:5])
    ]
    return [Classified(f.sha256, topk[0]["label"], topk[0]["confidence"], topk) for f in files]


def measure(url: str, rows: int, batch: int, repeats: int) -> dict[str, float]:
    """µs per image of record_files and save_batch at this batch size (median of repeats)."""
    migrate.upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions) as session:
            version = ensure_base_model(session, "resnet18", "none", CLASSES).id
        background = _seen(rows, f"bg{batch}")
        for part in range(0, rows, 2000):
            with transaction(sessions) as session:
                record_files(session, background[part : part + 2000])
        record_us, save_us = [], []
        for r in range(repeats):
            files = _seen(batch, f"b{batch}-{r}")
            started = time.perf_counter()
            with transaction(sessions) as session:
                record_files(session, files)
            record_us.append((time.perf_counter() - started) * 1e6 / batch)
            results = _classified(files)
            started = time.perf_counter()
            with transaction(sessions) as session:
                save_batch(session, version, results, [])
            save_us.append((time.perf_counter() - started) * 1e6 / batch)
        return {
            "record_us_per_image": round(statistics.median(record_us), 1),
            "save_us_per_image": round(statistics.median(save_us), 1),
        }
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_write", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000, help="images already in the ledger")
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores", flush=True)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ledger-write-") as work:
        for database in args.databases.split(","):
            server = None
            if database == "postgresql":
                from bench.plumbing import start_postgres

                started = start_postgres(Path(work))
                if isinstance(started, str):
                    print(f"postgresql: skipped: {started}")
                    continue
                server, url = started
            for batch in (int(b) for b in args.batches.split(",")):
                if database == "sqlite":
                    url = f"sqlite:///{Path(work) / f'ledger-{batch}.db'}"
                figures = measure(url, args.rows, batch, args.repeats)
                result.setdefault(database, {})[str(batch)] = figures
                print(f"{database} batch {batch}: {figures}", flush=True)
                if server is not None:
                    with server.admin(server.database) as conn:
                        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                        conn.execute(f"GRANT ALL ON SCHEMA public TO {server.user}")
            if server is not None:
                server.cleanup()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
