"""The in-process ceiling: the worker's own preprocessing (``worker.preprocess``) and classifier
(``worker.classifier``) in one process, decode overlapped with inference on threads, batched,
with no queue, no broker and no database. The best this hardware does for this model with this
code; the pipeline is measured against it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.classifier import Classifier, pick_autocast, pick_device
from worker.modelzoo import build
from worker.preprocess import BadImage, Preprocessing, load_for_model

MAX_PIXELS = 100_000_000


def make_classifier(model: str, device: str, precision: str = "auto") -> Classifier:
    """The classifier exactly as a worker builds it (random weights: same compute)."""
    loaded = build(model, "none")
    dev = pick_device(device)
    return Classifier(0, loaded, dev, pick_autocast(dev, precision))


def read_and_preprocess(path: Path, prep: Preprocessing) -> np.ndarray | None:
    try:
        return load_for_model(path.read_bytes(), prep, MAX_PIXELS)
    except BadImage:
        return None


@dataclass
class CeilingResult:
    images: int
    seconds: float
    batch_size: int
    decode_threads: int
    torch_threads: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "batch_size": self.batch_size,
            "decode_threads": self.decode_threads,
            "torch_threads": self.torch_threads,
        }


def warm_up(classifier: Classifier, batch_size: int) -> None:
    crop = classifier.loaded.preprocessing.crop
    dummy = np.zeros((batch_size, crop, crop, 3), dtype=np.uint8)
    for _ in range(2):
        classifier.predict(dummy, 5)


def run_ceiling(
    classifier: Classifier,
    files: Sequence[Path],
    batch_size: int,
    decode_threads: int,
    torch_threads: int,
    topk: int = 5,
) -> CeilingResult:
    """Decode on ``decode_threads`` threads (bounded read-ahead of two batches) while one
    inference thread, as in the worker's BatchEngine, runs batches of ``batch_size``.

    Inference runs on its own thread, not the caller's, because that is how the worker runs it
    and because it matters: on this 2-core CPU, torch driven from the main thread while decode
    threads compete measured ~25% slower and burned ~40% more CPU than the same loop driven
    from a plain thread."""
    result: list[CeilingResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(
                _ceiling_loop(classifier, files, batch_size, decode_threads, torch_threads, topk)
            )
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="inference")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _ceiling_loop(
    classifier: Classifier,
    files: Sequence[Path],
    batch_size: int,
    decode_threads: int,
    torch_threads: int,
    topk: int,
) -> CeilingResult:
    torch.set_num_threads(torch_threads)
    warm_up(classifier, batch_size)
    prep = classifier.loaded.preprocessing
    ready: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2 * batch_size)

    def feed(pool: ThreadPoolExecutor) -> None:
        futures = [pool.submit(read_and_preprocess, f, prep) for f in files]
        for fut in futures:
            ready.put(fut.result())

    start = time.perf_counter()
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") as pool:
        feeder = threading.Thread(target=feed, args=(pool,), daemon=True)
        feeder.start()
        remaining = len(files)
        while remaining:
            batch: list[np.ndarray] = []
            take = min(batch_size, remaining)
            for _ in range(take):
                array = ready.get()
                if array is not None:
                    batch.append(array)
            remaining -= take
            if batch:
                classifier.predict(np.stack(batch), topk)
        feeder.join()
    seconds = time.perf_counter() - start
    return CeilingResult(len(files), seconds, batch_size, decode_threads, torch_threads)


def model_only(
    classifier: Classifier, batch_size: int, torch_threads: int, batches: int = 8
) -> float:
    """Forward throughput alone (images/s) on preprocessed zeros: the model's own limit."""
    torch.set_num_threads(torch_threads)
    warm_up(classifier, batch_size)
    crop = classifier.loaded.preprocessing.crop
    dummy = np.zeros((batch_size, crop, crop, 3), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(batches):
        classifier.predict(dummy, 5)
    return batch_size * batches / (time.perf_counter() - start)


def decode_only(files: Sequence[Path], prep: Preprocessing, threads: int) -> float:
    """Preprocessing throughput alone (images/s) on ``threads`` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda f: read_and_preprocess(f, prep), files))
    return len(files) / (time.perf_counter() - start)


def sweep(
    classifier: Classifier,
    files: Sequence[Path],
    configs: Sequence[tuple[int, int, int]],
) -> list[CeilingResult]:
    """Run each (batch_size, decode_threads, torch_threads); the best is the ceiling."""
    return [run_ceiling(classifier, files, b, d, t) for b, d, t in configs]
