"""The naive baseline: how a tutorial wires "classify images with Celery".

One Celery task per image over a real Redis, a solo (or prefork) pool, fp32, batch size 1, plain
``Image.open().convert("RGB")`` and the classic torchvision transform chain, the model in
``torch.no_grad()``, and one ORM row committed per image into a stock SQLite file. Nothing here
is deliberately slow; it is simply what the docs show. The bench starts it as a worker process
(``python -m celery -A bench.naive worker -P solo``) and sends one task per file.

Configured by environment variables (set by the bench): ``BENCH_NAIVE_BROKER``,
``BENCH_NAIVE_DB``, ``BENCH_NAIVE_MODEL``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
import torchvision
from celery import Celery
from PIL import Image
from sqlalchemy import Engine, Float, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from torchvision import transforms

QUEUE = "naive"
TASK = "bench.naive.classify_image"

app = Celery("naive", broker=os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


class Base(DeclarativeBase):
    pass


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    label: Mapped[int] = mapped_column()
    confidence: Mapped[float] = mapped_column(Float)
    classified_at: Mapped[float] = mapped_column(Float)  # time.time(), when committed


_engine: Engine | None = None
_model: torch.nn.Module | None = None

preprocess = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = create_engine(f"sqlite:///{os.environ['BENCH_NAIVE_DB']}")
        Base.metadata.create_all(_engine)
    return _engine


DEVICE = os.environ.get("BENCH_NAIVE_DEVICE", "cpu")


def model() -> torch.nn.Module:
    global _model
    if _model is None:
        arch = os.environ.get("BENCH_NAIVE_MODEL", "resnet18")
        torch.manual_seed(0)
        _model = torchvision.models.get_model(arch, weights=None).eval().to(DEVICE)
    return _model


@app.task(name=TASK)
def classify_image(path: str) -> None:
    image = Image.open(path).convert("RGB")
    batch = preprocess(image).unsqueeze(0).to(DEVICE)
    with torch.no_grad():
        probs = model()(batch).softmax(dim=1)
    confidence, index = probs.max(dim=1)
    with Session(engine()) as session:
        session.add(
            Result(
                path=path,
                label=int(index.item()),
                confidence=float(confidence.item()),
                classified_at=time.time(),
            )
        )
        session.commit()


# --- the bench side: start it, feed it, time it ------------------------------------------------


class NaiveBaseline:
    """Redis and a naive worker, started once; each :meth:`run_burst` drops fresh copies of its
    files (renamed into an inbox, one task sent per file right after its rename) and waits for
    every row. Kept running between bursts so they can alternate with the pipeline's."""

    def __init__(
        self,
        root: Path,
        model_name: str,
        device: str = "cpu",
        pool: str = "solo",
        concurrency: int = 1,
    ) -> None:
        self.root = root
        self.db = root / "naive.db"
        self.inbox = root / "inbox"
        self.model_name = model_name
        self.device = device
        self.pool = pool
        self.concurrency = concurrency
        self._server: Any = None
        self._worker: Any = None
        self._producer: Celery | None = None
        self._tag = 7
        self._rows = 0

    def start(self, warmup: Sequence[Path]) -> None:
        from bench.harness import clean_env, spawn
        from inbox_classifier.redis_server import RedisServer

        self.root.mkdir(parents=True, exist_ok=True)
        self._server = RedisServer(self.root / "redis", persist=False)
        url = self._server.start()
        env = clean_env(
            {
                "BENCH_NAIVE_BROKER": url,
                "BENCH_NAIVE_DB": str(self.db),
                "BENCH_NAIVE_MODEL": self.model_name,
                "BENCH_NAIVE_DEVICE": self.device,
            }
        )
        args = ["-m", "celery", "-A", "bench.naive", "worker", "-P", self.pool]
        args += [f"--concurrency={self.concurrency}", "-l", "WARNING"]
        self._worker = spawn(args, self.root / "logs" / "naive-worker.log", env, cwd=self.root)
        self._producer = Celery("naive-producer", broker=url)
        self._send(self._stage(warmup, prefix="warm_"))

    def stop(self) -> None:
        from bench.harness import stop_tree

        if self._worker is not None:
            stop_tree(self._worker)
            self._worker = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def run_burst(self, files: Sequence[Path]) -> dict[str, Any]:
        from bench.harness import CpuMeter, percentiles

        assert self._worker is not None
        named = {"naive_worker": self._worker.pid}
        named.update(
            {
                f"naive_child{i}": c.pid
                for i, c in enumerate(psutil.Process(self._worker.pid).children())
            }
        )
        staged = self._stage(files)
        with CpuMeter(named) as meter:
            dropped = self._send(staged)
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            rows = dict(conn.execute("select path, classified_at from results").fetchall())
        latencies = [rows[p] - t for p, t in dropped.items()]
        seconds = max(rows[p] for p in dropped) - min(dropped.values())
        return {
            "images": len(files),
            "seconds": round(seconds, 3),
            "images_per_s": round(len(files) / seconds, 2),
            "latency": percentiles(latencies),
            "pool": self.pool,
            "concurrency": self.concurrency,
            "cpu": meter.result,
        }

    def _stage(self, files: Sequence[Path], prefix: str = "") -> list[Path]:
        """Fresh variants of ``files`` (content the worker has not seen), next to the inbox."""
        from bench.harness import stage

        self._tag += 1
        return stage(files, self.root / "staging", self._tag, prefix=prefix)

    def _send(self, staged: Sequence[Path]) -> dict[str, float]:
        """Drop each file into the inbox with one task right after it; wait for every row."""
        from bench.harness import burst

        assert self._producer is not None
        dropped: dict[str, float] = {}
        for path in staged:
            dropped.update(burst([path], self.inbox))
            self._producer.send_task(TASK, args=[str(self.inbox / path.name)], queue=QUEUE)
        self._rows += len(staged)
        self._wait_rows(self._rows, timeout=180.0)
        return dropped

    def _wait_rows(self, target: int, timeout: float) -> None:
        last, since = -1, time.monotonic()
        while True:
            count = 0
            if self.db.exists():
                with (
                    contextlib.suppress(sqlite3.OperationalError),
                    contextlib.closing(sqlite3.connect(self.db)) as conn,
                ):
                    count = conn.execute("select count(*) from results").fetchone()[0]
            if count >= target:
                return
            if self._worker.poll() is not None:
                raise RuntimeError(f"naive worker exited with {self._worker.returncode}")
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since > timeout:
                raise RuntimeError(f"naive baseline stalled at {count}/{target}")
            time.sleep(0.05)
