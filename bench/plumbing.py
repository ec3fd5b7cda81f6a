"""Everything but the model, timed: a burst into a running ``up`` whose workers run the no-model
backend (``INFERENCE_BACKEND=null``: files read, checked and written, no decode, no network), for
SQLite and PostgreSQL, with 60 KiB files and with the GPU run's photo-like JPEGs (≈ 380 KB).

    python -m bench.plumbing --images 20000            # the figures in docs/performance.md
    python -m bench.plumbing --images 300 --runs 1     # a smoke run (the test suite's)

Per database and mix: end-to-end img/s (first rename to last row committed), the CPU
microseconds per image of each process (watcher, each worker, Redis, PostgreSQL) and of each
stage (the watcher's and the workers' own accounts: watcher.stats, worker.classify.batch_stats),
medians
of ``--runs`` bursts of fresh content into one warm ``up``. The last line printed is one JSON
object: ``{"sqlite": {"60k": {"img_per_s": ..., "cpu_us_per_image": ...}, "380k": {...}},
"postgresql": {...}}``; a database that could not be started is absent, and the text says why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.harness import CpuMeter, burst, cpu_model, rmtree
from bench.pipeline import Pipeline, PipelineError
from contract import events

#: The mixes: name -> (bytes per file, files per burst at most; None: --images).
MIXES: dict[str, tuple[int, int | None]] = {"60k": (60 * 1024, None), "380k": (380_000, 6000)}
WARMUP_FILES = 200


@dataclass
class RunFigures:
    images: int
    seconds: float
    cpu_s: dict[str, float]  # per process
    stages_s: dict[str, float]  # per stage, CPU seconds (wall for the workers' write)

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


# --- files ---------------------------------------------------------------------------------------


def jpeg_like(index: int, size: int, salt: int) -> bytes:
    """A file the no-model path takes as a JPEG (its signature, its end-of-image marker) of
    exactly ``size`` bytes, distinct per (index, salt): a JPEG's markers around random bytes in
    comment segments (the no-model path never decodes)."""
    head = b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    tag = f"plumbing-{salt}-{index}".encode()
    body = bytearray()
    remaining = size - len(head) - 2
    while remaining > 4:
        length = min(65533, remaining - 4)
        chunk = (tag + os.urandom(max(0, length - len(tag))))[:length]
        body += b"\xff\xfe" + struct.pack(">H", length + 2) + chunk
        remaining -= length + 4
    body += b"\x00" * max(0, remaining)
    return head + bytes(body) + b"\xff\xd9"


def make_files(folder: Path, count: int, size: int, salt: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"p{salt}_{i:06d}.jpg"
        path.write_bytes(jpeg_like(i, size, salt))
        paths.append(path)
    os.sync()  # on disk (page cache warm) before the burst: the burst measures the pipeline
    return paths


# --- one database ---------------------------------------------------------------------------------


def _periods(log_dir: Path, marks: dict[Path, int]) -> list[events.Event]:
    found: list[events.Event] = []
    for path in sorted(log_dir.glob("*.log")):
        with open(path, "rb") as handle:
            handle.seek(marks.get(path, 0))
            text = handle.read().decode("utf-8", "replace")
        for line in text.splitlines():
            _, hit, message = line.partition(f"{events.EVENT_LOGGER}: ")
            if hit and (event := events.decode(message)) is not None:
                found.append(event)
    return found


def _marks(log_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in log_dir.glob("*.log")}


def _stages(found: list[events.Event], images: int) -> dict[str, float]:
    """CPU seconds per stage, watcher's and workers', from their events of one burst."""
    totals: dict[str, float] = {}
    for event in found:
        if isinstance(event, events.WatcherPeriod):
            prefix = "watcher "
        elif isinstance(event, events.BusyPeriod):
            prefix = "worker "
        else:
            continue
        for name, seconds in event.stages_s.items():
            totals[prefix + name] = totals.get(prefix + name, 0.0) + seconds
    return totals


def _settled(found: list[events.Event]) -> int:
    return sum(
        e.classified + e.rescored + e.failed for e in found if isinstance(e, events.BusyPeriod)
    )


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on the machine so far (0 without any)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if (proc.info["name"] or "").startswith("postgres") and proc.info["cpu_times"]:
            times = proc.info["cpu_times"]
            total += times.user + times.system
    return total


def measure_burst(pipeline: Pipeline, files: Sequence[Path], timeout: float) -> RunFigures:
    log_dir = pipeline.data_dir / "logs"
    marks = _marks(log_dir)
    before = pipeline._count_settled()
    pids = pipeline.named_pids()
    database_cpu = _postgres_cpu()
    with CpuMeter(pids) as meter:
        started = time.monotonic()
        dropped = burst(files, pipeline.inbox)
        pipeline._wait_count(before + len(dropped), timeout)
        seconds = time.monotonic() - started
    database_cpu = _postgres_cpu() - database_cpu
    # The periods' events come a moment after the last row (a worker, then the watcher, idle).
    deadline = time.monotonic() + 10
    found = _periods(log_dir, marks)
    while _settled(found) < len(dropped) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = _periods(log_dir, marks)
    cpu = {k: v for k, v in meter.result["cpu_s"].items() if k not in ("bench", "up")}
    if database_cpu > 0:
        cpu["postgresql"] = round(database_cpu, 3)
    return RunFigures(len(dropped), seconds, cpu, _stages(found, len(dropped)))


def run_database(
    name: str,
    work: Path,
    images: int,
    runs: int,
    mixes: Sequence[str],
    database_url: str | None,
) -> dict[str, Any]:
    """One warm ``up`` on this database; ``runs`` bursts per mix. Returns figures per mix."""
    root = work / name
    env = {"INBOX_CLASSIFIER_INFERENCE_BACKEND": "null", "INBOX_CLASSIFIER_QUIET_PERIOD_S": "1"}
    pipeline = Pipeline(root, "resnet18", "cpu", settings_env=env, database_url=database_url)
    out: dict[str, Any] = {}
    try:
        warm = make_files(root / "warm", WARMUP_FILES, 60 * 1024, salt=0)
        pipeline.start(warm, rounds=1, expect_compile=False)
        for mix in mixes:
            size, cap = MIXES[mix]
            count = min(images, cap) if cap else images
            figures = []
            for run in range(runs):
                files = make_files(root / "staging", count, size, salt=hash((mix, run)) & 0xFFFF)
                figures.append(measure_burst(pipeline, files, timeout=300))
                rmtree(pipeline.inbox)
                pipeline.inbox.mkdir()
            out[mix] = summarise(figures)
            print(describe(name, mix, size, out[mix]), flush=True)
    finally:
        pipeline.stop()
    return out


def summarise(figures: list[RunFigures]) -> dict[str, Any]:
    """Medians over the runs: img/s, CPU µs per image per process and per stage."""
    rates = [f.img_per_s for f in figures]
    chosen = figures[rates.index(statistics.median_low(rates))]  # the median run's breakdown
    per_process = {k: round(v * 1e6 / chosen.images, 1) for k, v in chosen.cpu_s.items()}
    per_stage = {k: round(v * 1e6 / chosen.images, 1) for k, v in chosen.stages_s.items()}
    total = round(sum(per_process.values()), 1)
    return {
        "img_per_s": round(statistics.median(rates), 1),
        "img_per_s_runs": [round(r, 1) for r in rates],
        "images": chosen.images,
        "cpu_us_per_image": total,
        "cpu_us_per_image_by_process": per_process,
        "cpu_us_per_image_by_stage": per_stage,
    }


def describe(database: str, mix: str, size: int, figures: dict[str, Any]) -> str:
    lines = [
        f"{database} {mix} ({figures['images']} files of {size / 1024:.0f} KiB): "
        f"{figures['img_per_s']:.0f} img/s (runs {figures['img_per_s_runs']}), "
        f"{figures['cpu_us_per_image']:.0f} µs CPU per image"
    ]
    for name, us in sorted(figures["cpu_us_per_image_by_process"].items()):
        lines.append(f"    process {name:<18} {us:8.1f} µs/image")
    for name, us in sorted(figures["cpu_us_per_image_by_stage"].items()):
        lines.append(f"    stage   {name:<32} {us:8.1f} µs/image")
    return "\n".join(lines)


# --- PostgreSQL -----------------------------------------------------------------------------------


def start_postgres(work: Path) -> tuple[Any, str] | str:
    """A throwaway PostgreSQL (the tests' helper), or why there is none."""
    try:
        from tests.helpers.postgres import PostgresServer, find_bindir
    except ImportError as exc:
        return f"no PostgreSQL helper ({exc})"
    bindir = find_bindir()
    if bindir is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    server = PostgresServer(bindir)  # its own folder, which the postgres user can enter
    try:
        return server, server.start()
    except Exception as exc:
        server.cleanup()
        return f"PostgreSQL did not start: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plumbing", description=__doc__)
    parser.add_argument("--images", type=int, default=20000, help="files per burst")
    parser.add_argument("--runs", type=int, default=3, help="bursts per mix (median)")
    parser.add_argument("--mixes", default="60k,380k", help="60k and/or 380k")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    mixes = [m for m in args.mixes.split(",") if m]
    unknown = [m for m in mixes if m not in MIXES]
    if unknown:
        parser.error(f"unknown mix(es) {unknown}; choose from {sorted(MIXES)}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="plumbing-"))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; work dir {work}", flush=True)
    result: dict[str, Any] = {}
    try:
        for database in [d for d in args.databases.split(",") if d]:
            url = None
            server = None
            if database == "postgresql":
                started = start_postgres(work)
                if isinstance(started, str):
                    print(f"postgresql: skipped: {started}", flush=True)
                    continue
                server, url = started
            try:
                result[database] = run_database(
                    database, work, args.images, args.runs, mixes, url
                )
            except PipelineError as exc:
                print(f"{database}: failed: {exc}", flush=True)
            finally:
                if server is not None:
                    server.cleanup()
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(
        {
            db: {
                mix: {k: v[k] for k in ("img_per_s", "cpu_us_per_image")}
                for mix, v in per_mix.items()
            }
            for db, per_mix in result.items()
        }
    )
    if args.out:
        args.out.write_text(json.dumps({"machine": cpu_model(), "figures": result}, indent=2))
    print(line)
    return 0 if result else 1


if __name__ == "__main__":
    raise SystemExit(main())

