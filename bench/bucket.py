"""An inbox in a bucket against the same burst from a folder (issue 33), on a local SeaweedFS
and the no-model path (``INFERENCE_BACKEND=null``: everything but the model):

    python -m bench.bucket --objects 10000          # the figures in docs/performance.md
    python -m bench.bucket --objects 200 --runs 1   # a smoke run

For each inbox a warm ``up`` (SQLite), then ``--runs`` bursts of fresh 60 KiB JPEG-like files:
into the folder, written by ``--writers`` threads (temporary name, then a rename); into the
bucket, PUT by as many threads. Timed from the first write to the last row committed; then
how many rows and predictions there are per content (nothing lost, none twice), and the
discovery latency of single objects (written, then found) with the listing alone. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.harness import cpu_model, rmtree
from bench.pipeline import Pipeline
from bench.plumbing import jpeg_like
from db.models import Image, ImagePath, ImageStatus, Prediction
from tests.helpers.object_store import SeaweedServer

SIZE = 60 * 1024
BUCKET, PREFIX = "bench", "drop/"


def _counts(pipeline: Pipeline) -> dict[str, int]:
    engine = pipeline._engine
    assert engine is not None
    with engine.connect() as conn:
        images = conn.execute(select(func.count()).select_from(Image)).scalar_one()
        settled = conn.execute(
            select(func.count()).select_from(Image).where(Image.status != ImageStatus.QUEUED)
        ).scalar_one()
        paths = conn.execute(select(func.count()).select_from(ImagePath)).scalar_one()
        twice = conn.execute(
            select(func.count()).select_from(
                select(Prediction.image_id)
                .group_by(Prediction.image_id)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
    return {"images": images, "settled": settled, "paths": paths, "predicted_twice": twice}


class Writer:
    """Writes a burst's files: into the folder (a temporary name, then a rename, as a
    careful producer does) or into the bucket (PUT)."""

    def __init__(self, inbox: Path, s3: Any | None) -> None:
        self.inbox, self.s3, self.round = inbox, s3, 0

    def write(self, index: int, data: bytes) -> None:
        name = f"r{self.round}-{index:06d}.jpg"
        if self.s3 is not None:
            self.put(PREFIX + name, data)
            return
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.inbox / name)

    def put(self, key: str, data: bytes) -> None:
        assert self.s3 is not None
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)


def _burst(
    pipeline: Pipeline, write: Callable[[int, bytes], None], count: int, salt: int, writers: int
) -> dict[str, Any]:
    before = _counts(pipeline)
    files = [jpeg_like(i, SIZE, salt) for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(lambda i: write(i, files[i]), range(count)))
    written = time.monotonic() - started
    pipeline._wait_count(before["settled"] + count, timeout=300)
    seconds = time.monotonic() - started
    after = _counts(pipeline)
    return {
        "objects": count,
        "seconds": round(seconds, 2),
        "per_s": round(count / seconds, 1),
        "write_seconds": round(written, 2),
        "new_rows": after["images"] - before["images"],
        "distinct_contents": len({hashlib.sha256(f).digest() for f in files}),
        "predicted_twice": after["predicted_twice"],
    }


def _discovery(pipeline: Pipeline, put: Callable[[str, bytes], None], samples: int) -> list[float]:
    """Seconds from a single object's PUT to its row (the listing alone), one at a time."""
    latencies = []
    for i in range(samples):
        before = _counts(pipeline)["images"]
        key = f"{PREFIX}single-{time.time_ns()}-{i}.jpg"
        started = time.monotonic()
        put(key, jpeg_like(i, SIZE, 60_000 + i))
        while _counts(pipeline)["images"] <= before:
            time.sleep(0.02)
        latencies.append(time.monotonic() - started)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--discovery-samples", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bucket-"))
    weed = SeaweedServer(work / "weed")
    weed.start()
    out: dict[str, Any] = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d")}
    try:
        s3 = weed.client()
        s3.create_bucket(Bucket=BUCKET)
        base = {
            "INBOX_CLASSIFIER_INFERENCE_BACKEND": "null",
            "INBOX_CLASSIFIER_QUIET_PERIOD_S": "1",
        }
        for mode in ("folder", "bucket"):
            env = dict(base)
            url = None
            if mode == "bucket":
                env |= weed.environment()
                url = f"s3://{BUCKET}/{PREFIX}"
            pipeline = Pipeline(work / mode, "resnet18", "cpu", settings_env=env, inbox_url=url)
            writer = Writer(pipeline.inbox, s3 if mode == "bucket" else None)
            try:
                pipeline.start([], rounds=0, expect_compile=False)
                runs = []
                for run in range(args.runs):
                    writer.round = run + 1
                    runs.append(_burst(pipeline, writer.write, args.objects, run + 1, args.writers))
                    print(mode, json.dumps(runs[-1]), flush=True)
                figures: dict[str, Any] = {
                    "runs": runs,
                    "per_s": statistics.median(r["per_s"] for r in runs),
                }
                if mode == "bucket":
                    lat = sorted(_discovery(pipeline, writer.put, args.discovery_samples))
                    figures["discovery_s"] = {
                        "p50": round(statistics.median(lat), 2),
                        "max": round(lat[-1], 2),
                        "list_interval_s": 2.0,
                    }
                    print("discovery", json.dumps(figures["discovery_s"]), flush=True)
                out[mode] = figures
            finally:
                pipeline.stop()
        out["bucket_over_folder"] = round(out["bucket"]["per_s"] / out["folder"]["per_s"], 3)
    finally:
        weed.stop()
        rmtree(work)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"bucket-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"results: {path}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
