"""An inbox in a bucket against the same burst from a folder (issue 33), on a local SeaweedFS
and the no-model path (``INFERENCE_BACKEND=null``: everything but the model):

    python -m bench.bucket --objects 10000          # the figures in docs/performance.md
    python -m bench.bucket --objects 200 --runs 1   # a smoke run

For each inbox a warm ``up`` (SQLite), then ``--runs`` bursts of fresh 60 KiB JPEG-like files:
into the folder, written by ``--writers`` threads (temporary name, then a rename); into the
bucket, PUT by as many threads. Timed from the first write to the last row committed; then
how many rows and predictions there are per content (nothing lost, none twice), and the
discovery latency of single objects (written, then found): with the listing alone, and with
SeaweedFS's filer notifying the watcher (``BUCKET_EVENTS_LISTEN``). The last line printed is
one JSON object.
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
from inbox_classifier.redis_server import free_port
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


MODES = {
    "folder": "write, rename",
    "bucket": "PUT, list, GET to hash, GET to classify",
    "bucket_notified": "as bucket, and SeaweedFS's webhook to the watcher",
}


def _run_mode(mode: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One warm ``up`` for ``mode``: its bursts, and for a bucket the discovery latency."""
    env = {"INBOX_CLASSIFIER_INFERENCE_BACKEND": "null", "INBOX_CLASSIFIER_QUIET_PERIOD_S": "1"}
    weed, url = None, None
    if mode != "folder":
        port = free_port()
        notified = mode == "bucket_notified"
        weed = SeaweedServer(
            work / f"weed-{mode}", webhook=f"http://127.0.0.1:{port}/" if notified else None
        )
        weed.start()
        weed.client().create_bucket(Bucket=BUCKET)
        env |= weed.environment()
        if notified:
            env["INBOX_CLASSIFIER_BUCKET_EVENTS_LISTEN"] = f"127.0.0.1:{port}"
        url = f"s3://{BUCKET}/{PREFIX}"
    pipeline = Pipeline(work / mode, "resnet18", "cpu", settings_env=env, inbox_url=url)
    writer = Writer(pipeline.inbox, weed.client() if weed else None)
    try:
        pipeline.start([], rounds=0, expect_compile=False)
        runs = []
        for run in range(args.runs):
            writer.round = run + 1
            runs.append(_burst(pipeline, writer.write, args.objects, run + 1, args.writers))
            print(mode, json.dumps(runs[-1]), flush=True)
        figures: dict[str, Any] = {
            "what": MODES[mode],
            "runs": runs,
            "per_s": statistics.median(r["per_s"] for r in runs),
        }
        if weed is not None:
            lat = sorted(_discovery(pipeline, writer.put, args.discovery_samples))
            figures["discovery_s"] = {
                "p50": round(statistics.median(lat), 2),
                "max": round(lat[-1], 2),
                "list_interval_s": 2.0,
            }
            print(mode, "discovery", json.dumps(figures["discovery_s"]), flush=True)
        return figures
    finally:
        pipeline.stop()
        if weed is not None:
            weed.stop()


def _store_alone(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The store's own intake on this machine, nothing else running: the same burst's PUTs
    into a fresh SeaweedFS. No bucket inbox on the same cores can move faster than this."""
    weed = SeaweedServer(work / "weed-alone")
    weed.start()
    try:
        s3 = weed.client()
        s3.create_bucket(Bucket=BUCKET)
        writer = Writer(work, s3)
        files = [jpeg_like(i, SIZE, 90_000) for i in range(args.objects)]
        started = time.monotonic()
        with ThreadPoolExecutor(args.writers) as pool:
            list(pool.map(lambda i: writer.write(i, files[i]), range(args.objects)))
        seconds = time.monotonic() - started
    finally:
        weed.stop()
    figures = {"objects": args.objects, "seconds": round(seconds, 2)}
    figures["per_s"] = round(args.objects / seconds, 1)
    print("store_alone", json.dumps(figures), flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--discovery-samples", type=int, default=20)
    parser.add_argument("--modes", default=",".join(MODES), help="of " + ", ".join(MODES))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bucket-"))
    out: dict[str, Any] = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d")}
    try:
        for mode in args.modes.split(","):
            out[mode] = _run_mode(mode, work, args)
        if args.modes != "folder":
            out["store_alone"] = _store_alone(work, args)
        if "folder" in out:
            for mode in ("bucket", "bucket_notified", "store_alone"):
                if mode in out:
                    out[f"{mode}_over_folder"] = round(
                        out[mode]["per_s"] / out["folder"]["per_s"], 3
                    )
    finally:
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
