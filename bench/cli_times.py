"""How long the CLI takes to answer, idle, in a folder with a small ledger (no `up` running):

    python -m bench.cli_times [--before /tmp/before] [--runs 7]

``--help``, ``status`` and ``results --limit 20``, each run ``--runs`` times as a fresh
process (``python -m inbox_classifier``), medians; ``--before`` runs an older tree the same way
(its folder first on ``PYTHONPATH``). docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, cpu_model

COMMANDS = (["--help"], ["status"], ["results", "--limit", "20"])


def _ledger(folder: Path) -> None:
    """A ledger with 300 classified rows, made by this tree."""
    import hashlib

    from contract.records import Classified, SeenFile
    from db import migrate
    from db.batch_write import save_batch
    from db.engine import make_engine, make_sessionmaker, transaction
    from db.ledger import record_files
    from db.versions import ensure_base_model

    url = f"sqlite:///{folder / 'var' / 'results.db'}"
    (folder / "var").mkdir(parents=True)
    migrate.upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    files = [
        SeenFile(
            str(folder / "inbox" / f"img_{i:04d}.jpg"),
            hashlib.sha256(bytes([i % 256, i // 256])).hexdigest(),
            1000,
            i,
        )
        for i in range(300)
    ]
    with transaction(sessions) as session:
        version = ensure_base_model(session, "resnet18", "none", ["cat", "dog"]).id
        record_files(session, files)
        save_batch(
            session,
            version,
            [
                Classified(f.sha256, "cat", 0.7, [{"label": "cat", "confidence": 0.7}])
                for f in files
            ],
        )
    engine.dispose()


def time_commands(tree: str | None, folder: Path, runs: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_CLASSIFIER_")}
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([tree, str(REPO)])
    out = {}
    for args in COMMANDS:
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "inbox_classifier", *args],
                cwd=folder,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            seconds.append(time.perf_counter() - started)
        out[" ".join(args)] = round(statistics.median(seconds), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_times", description=__doc__)
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="cli-times-") as work:
        folder = Path(work)
        _ledger(folder)
        if args.before is not None:
            print("before:", time_commands(str(args.before.resolve()), folder, args.runs))
        print("after: ", time_commands(None, folder, args.runs))


if __name__ == "__main__":
    main()
