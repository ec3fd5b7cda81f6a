"""The real system, started the way users start it (``inbox-classifier up --weights none
--no-trainer --no-beat``), measured from files renamed into the inbox to rows committed in the
ledger."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from bench.harness import (
    CpuMeter,
    burst,
    clean_env,
    descendants,
    percentiles,
    spawn,
    stage,
    stop_tree,
    tail,
)
from contract import events
from db.models import Image, ImagePath, ImageStatus

POLL_S = 0.1
STALL_TIMEOUT_S = 90.0


class PipelineError(RuntimeError):
    pass


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:  # SQLite hands DateTime(timezone=True) back naive, in UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


@dataclass
class BurstResult:
    images: int
    done: int
    failed: int
    seconds: float  # first rename -> last row committed
    first_row_s: float  # first rename -> first row committed (start-up of the burst)
    started_at: float  # wall time of the first rename
    latencies_s: list[float] = field(repr=False)
    cpu: dict[str, Any] = field(default_factory=dict)
    # Milliseconds per image in each stage of the workers (their busy-period events), summed
    # over the threads that ran it: where the time goes.
    stages_ms: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "done": self.done,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "first_row_s": round(self.first_row_s, 3),
            "started_at": round(self.started_at, 3),
            "images_per_s": round(self.images_per_s, 2),
            "latency": percentiles(self.latencies_s),
            "cpu": self.cpu,
            "stages_ms_per_image": self.stages_ms,
        }


class Pipeline:
    """One ``inbox-classifier up`` in its own directory, with its own private Redis and SQLite."""

    def __init__(
        self,
        root: Path,
        model: str,
        device: str,
        workers: int | None = None,
        settings_env: dict[str, str] | None = None,
        database_url: str | None = None,
        inbox_url: str | None = None,
    ) -> None:
        self.root = root
        self.inbox_url = inbox_url  # s3://bucket/prefix: the inbox is a bucket (bench.bucket)
        self.data_dir = root / "data"
        self.inbox = root / "inbox"
        self.staging = root / "staging"  # same filesystem as the inbox: renames are atomic
        self.log = root / "logs" / "up.log"
        self.model = model
        self.device = device
        self.workers = workers
        self.settings_env = settings_env or {}
        self.database_url = database_url  # default: SQLite in the data dir
        self.process: Any = None
        self._engine: Engine | None = None
        self._tags = 0
        self.compile_outcome: list[str] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(
        self,
        warmup: Sequence[Path],
        rounds: int = 1,
        timeout: float = 300.0,
        expect_compile: bool = True,
    ) -> BurstResult:
        """Start ``up`` and push ``warmup`` files through it (``rounds`` times, fresh content
        each time), then wait until every worker has compiled its model (or said it stays
        eager): what is measured is a warm service."""
        args = [
            "-m",
            "inbox_classifier",
            "up",
            "--weights",
            "none",
            "--model",
            self.model,
            "--device",
            self.device,
            "--data-dir",
            str(self.data_dir),
            "--inbox",
            self.inbox_url or str(self.inbox),
            "--no-trainer",
            "--no-beat",
            "--no-web",
        ]
        if self.workers:
            args += ["--workers", str(self.workers)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        self.inbox.mkdir(parents=True, exist_ok=True)
        env = clean_env(self.settings_env)
        self.process = spawn(args, self.log, env, cwd=self.root)
        db = self.data_dir / "results.db"
        deadline = time.monotonic() + timeout
        while (not self.database_url and not db.exists()) or len(self.roles()["worker"]) < (
            self.workers or 1
        ):
            self._check_alive()
            if time.monotonic() > deadline:
                raise PipelineError("pipeline did not start in time\n" + tail(self.log))
            time.sleep(0.2)
        self._engine = create_engine(self.database_url or f"sqlite:///{db}")
        result = BurstResult(0, 0, 0, 0.0, 0.0, time.time(), [])  # rounds=0: no warm-up here
        for _ in range(rounds):
            result = self.run_burst(warmup, timeout=timeout)
        self.compile_outcome = self.wait_compiled(timeout if expect_compile else 0.0)
        return result

    def wait_compiled(self, timeout: float) -> list[str]:
        """Each worker's outcome from the log: 'compiled', 'eager', 'onnxruntime int8|fp32'
        (worker.model.serving switched it to ONNX Runtime), 'torch (after ONNX)' (it tried and kept
        torch) or 'unknown'."""
        workers = self.workers or 1
        deadline = time.monotonic() + timeout
        while True:
            text = "".join(  # `up` keeps each worker's output in its own log file
                path.read_text(errors="replace")
                for path in sorted((self.data_dir / "logs").glob("worker-*.log"))
            )
            outcomes = ["compiled"] * text.count("model compiled for batch sizes")
            for precision in ("int8", "fp32"):
                found = text.count(f"classifies with onnxruntime {precision}")
                outcomes += [f"onnxruntime {precision}"] * found
            # The ONNX build ended with torch serving (int8 refused on a bf16 CPU, artifacts
            # refused, a failed build): as final as the lines above. Without this the wait ran
            # to its timeout, since "classifying eagerly" comes only with the next batch.
            outcomes += ["torch (after ONNX)"] * sum(
                "classifies with torch" in line
                and "ONNX" in line
                and "until its ONNX artifacts are built" not in line
                for line in text.splitlines()
            )
            outcomes += ["eager"] * (
                text.count("classifying eagerly") + text.count("torch.compile failed")
            )
            if len(outcomes) >= workers:
                return outcomes
            if time.monotonic() > deadline:
                return [*outcomes, *["unknown"] * (workers - len(outcomes))]
            self._check_alive()
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)
            self.process = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise PipelineError(
                f"`inbox-classifier up` exited with {self.process.returncode}\n" + tail(self.log)
            )

    def roles(self) -> dict[str, list[psutil.Process]]:
        """The pipeline's processes by role, from their command lines."""
        found: dict[str, list[psutil.Process]] = {"watcher": [], "worker": [], "redis": []}
        if self.process is None:
            return found
        for proc in descendants(self.process.pid):
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "redis-server" in cmd:
                found["redis"].append(proc)
            elif " watch" in cmd:
                found["watcher"].append(proc)
            elif " worker" in cmd and "classify" in cmd:
                found["worker"].append(proc)
        return found

    def named_pids(self) -> dict[str, int]:
        named = {"up": self.process.pid} if self.process else {}
        for role, procs in self.roles().items():
            for i, proc in enumerate(procs):
                named[f"{role}{i if len(procs) > 1 else ''}"] = proc.pid
        return named

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of every process of the pipeline, by name (``up`` included)."""
        out = {}
        for name, pid in self.named_pids().items():
            try:
                out[name] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
            except psutil.Error:
                continue
        return out

    def worker_rss_mib(self) -> list[float]:
        out = []
        for proc in self.roles()["worker"]:
            try:
                out.append(round(proc.memory_info().rss / 2**20, 1))
            except psutil.Error:
                out.append(float("nan"))
        return out

    # --- measuring -------------------------------------------------------------------------------

    def next_tag(self) -> int:
        """A fresh variant tag: every burst has content the ledger has not seen."""
        self._tags += 1
        return self._tags + os.getpid() % 1000 * 1000

    def _settled(self, paths: Sequence[str]) -> dict[str, tuple[str, float | None]]:
        assert self._engine is not None
        out: dict[str, tuple[str, float | None]] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(paths), 500):
                chunk = list(paths[start : start + 500])
                rows = conn.execute(
                    select(ImagePath.path, Image.status, Image.classified_at, Image.updated_at)
                    .join(Image, Image.id == ImagePath.image_id)
                    .where(ImagePath.path.in_(chunk), Image.status != ImageStatus.QUEUED.value)
                )
                for path, status, classified_at, updated_at in rows:
                    when = classified_at or updated_at
                    out[path] = (status, _epoch(when) if when else None)
        return out

    def _count_settled(self) -> int:
        assert self._engine is not None
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(Image)
                    .where(Image.status != ImageStatus.QUEUED.value)
                ).scalar_one()
            )

    def run_burst(self, sources: Sequence[Path], timeout: float = STALL_TIMEOUT_S) -> BurstResult:
        """Stage fresh variants of ``sources``, rename them all into the inbox at once, and wait
        until every one has a committed row."""
        staged = stage(sources, self.staging, self.next_tag())
        before = self._count_settled()
        marks = self._log_marks()
        with CpuMeter(self.named_pids()) as meter:
            dropped = burst(staged, self.inbox)
            self._wait_count(before + len(staged), timeout)
        result = self._result(dropped, meter.result)
        result.stages_ms = self._stages(marks, len(staged))
        return result

    def _log_marks(self) -> dict[Path, int]:
        logs = sorted((self.data_dir / "logs").glob("worker-*.log"))
        return {path: path.stat().st_size for path in logs}

    def _stages(self, marks: dict[Path, int], images: int, wait_s: float = 5.0) -> dict[str, float]:
        """Per image, each stage's milliseconds, from the busy-period events the workers logged
        since ``marks`` (they come once a worker goes idle, a moment after the last row)."""
        deadline = time.monotonic() + wait_s
        while True:
            periods = []
            for path in sorted((self.data_dir / "logs").glob("worker-*.log")):
                with open(path, "rb") as handle:
                    handle.seek(marks.get(path, 0))
                    text = handle.read().decode("utf-8", "replace")
                for line in text.splitlines():
                    _, found, message = line.partition(f"{events.EVENT_LOGGER}: ")
                    if found and isinstance(event := events.decode(message), events.BusyPeriod):
                        periods.append(event)
            settled = sum(p.classified + p.rescored + p.failed for p in periods)
            if settled >= images or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        totals: dict[str, float] = {}
        for period in periods:
            for name, seconds in period.stages_s.items():
                totals[name] = totals.get(name, 0.0) + seconds
        return {name: round(seconds * 1000 / max(1, images), 3) for name, seconds in totals.items()}

    def _wait_count(self, target: int, timeout: float) -> None:
        last, last_change = -1, time.monotonic()
        while True:
            count = self._count_settled()
            if count >= target:
                return
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > timeout:
                raise PipelineError(
                    f"no progress for {timeout:.0f}s ({count}/{target} rows settled)\n"
                    + tail(self.log)
                )
            self._check_alive()
            time.sleep(POLL_S)

    def _result(self, dropped: dict[str, float], cpu: dict[str, Any]) -> BurstResult:
        rows = self._settled(list(dropped))
        missing = set(dropped) - set(rows)
        if missing:  # same content twice in one burst can't happen (variants); be safe
            raise PipelineError(f"{len(missing)} dropped file(s) have no settled row")
        latencies = [
            when - t
            for p, t in dropped.items()
            if rows[p][0] == ImageStatus.DONE.value and (when := rows[p][1]) is not None
        ]
        finished = max(r[1] or 0.0 for r in rows.values())
        first = min(r[1] or finished for r in rows.values())
        done = sum(1 for s, _ in rows.values() if s == ImageStatus.DONE.value)
        return BurstResult(
            images=len(dropped),
            done=done,
            failed=len(dropped) - done,
            seconds=finished - min(dropped.values()),
            first_row_s=first - min(dropped.values()),
            started_at=min(dropped.values()),
            latencies_s=latencies,
            cpu=cpu,
        )

    def idle_latency(self, sources: Sequence[Path], pause_s: float) -> BurstResult:
        """Drop files one at a time into an idle pipeline, each after the previous one's row
        is committed and ``pause_s`` has passed."""
        staged = stage(sources, self.staging, self.next_tag(), prefix="idle_")
        dropped: dict[str, float] = {}
        with CpuMeter(self.named_pids()) as meter:
            for path in staged:
                time.sleep(pause_s)
                before = self._count_settled()
                dropped.update(burst([path], self.inbox))
                self._wait_count(before + 1, STALL_TIMEOUT_S)
        return self._result(dropped, meter.result)

    def sqlite_check(self) -> None:
        assert self._engine is not None
        with self._engine.connect() as conn:
            conn.execute(text("select 1"))
