"""The decode stage and the model on the worker's device, each alone and together, on the same
images (``bench/gpu_check.sh`` runs them; ``bench.run --device cuda`` the ceiling):

- :func:`decode_alone`: the worker's batched decode
(:func:`worker.classify.batch_decode.decode_batch`:
  nvjpeg in one call per batch on a GPU, orientation, resize and crop there) of the JPEGs;
- :func:`pillow_alone`: the Pillow path (scaled DCT decode, resize, crop) on threads;
- :func:`model_alone`: the classifier on ready batches, as the worker runs it;
- :func:`run_gpu_decode_ceiling`: files read, verified and probed on threads (the PNGs and the
  JPEGs the device cannot take decoded by Pillow there, in parallel), each batch's JPEGs decoded
  on the device, classified, results back on the host: no queue, no ledger.

On a CPU (``device="cpu"``) the same calls run on torchvision's CPU decoder: the dry run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.ceiling import MAX_PIXELS, CeilingResult, warm_up
from imaging.decode import BadImage
from worker.classify.batch_decode import Encoded, assemble, decode_batch, prepare, probe, stack_on
from worker.model.classifier import Classifier
from worker.model.preprocess import Preprocessing, load_for_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_alone(
    files: Sequence[Path], prep: Preprocessing, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """img/s of the device decode stage alone on the JPEGs of ``files`` (read beforehand)."""
    encoded = [e for p in files if (e := probe(p.read_bytes(), MAX_PIXELS)) is not None]
    if not encoded:
        return {"images": 0, "images_per_s": 0.0}
    decode_batch(encoded[: min(8, len(encoded))], prep, device)  # warm: nvjpeg's handles
    _sync(device)
    started = time.perf_counter()
    for start in range(0, len(encoded), batch_size):
        decode_batch(encoded[start : start + batch_size], prep, device)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"images": len(encoded), "images_per_s": round(len(encoded) / seconds, 1)}


def pillow_alone(files: Sequence[Path], prep: Preprocessing, threads: int) -> dict[str, float]:
    """img/s of the Pillow path (read, scaled decode, resize, crop) on ``threads`` threads."""
    datas = [p.read_bytes() for p in files]

    def one(data: bytes) -> bool:
        try:
            load_for_model(data, prep, MAX_PIXELS)
            return True
        except BadImage:
            return False

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(one, datas))
    seconds = time.perf_counter() - started
    return {"images": done, "threads": threads, "images_per_s": round(done / seconds, 1)}


def model_alone(
    classifier: Classifier, batch_size: int = 256, batches: int = 20
) -> dict[str, float]:
    """img/s of the classifier on ready uint8 batches on its device, as the worker calls it."""
    crop = classifier.loaded.preprocessing.crop
    device = classifier.device
    batch = torch.randint(0, 255, (batch_size, crop, crop, 3), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(3):
            classifier.logits(batch)
        _sync(device)
        started = time.perf_counter()
        for _ in range(batches):
            classifier.logits(batch)
        _sync(device)
    seconds = time.perf_counter() - started
    return {"batch_size": batch_size, "images_per_s": round(batch_size * batches / seconds, 1)}


def run_gpu_decode_ceiling(
    classifier: Classifier, files: Sequence[Path], batch_size: int, read_threads: int = 8
) -> CeilingResult:
    """Files read and probed on threads, the rest decoded by Pillow there in parallel; each
    batch's JPEGs decoded, resized and cropped on the device and classified."""
    device = classifier.device
    warm_up(classifier, batch_size)
    prep = classifier.loaded.preprocessing
    batches: queue.Queue[list[np.ndarray | Encoded] | None] = queue.Queue(maxsize=3)

    def prepared(path: Path) -> np.ndarray | Encoded | None:
        try:
            return prepare(path.read_bytes(), prep, MAX_PIXELS)
        except BadImage:  # fails alone in the worker; not part of the ceiling
            return None

    def reader() -> None:
        with ThreadPoolExecutor(read_threads) as pool:
            for start in range(0, len(files), batch_size):
                items = pool.map(prepared, files[start : start + batch_size])
                batches.put([i for i in items if i is not None])
        batches.put(None)

    started = time.perf_counter()
    cpu0 = time.process_time()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with ThreadPoolExecutor(read_threads) as fallback, torch.inference_mode():
        while (items := batches.get()) is not None:
            rows = assemble(items, prep, device, MAX_PIXELS, pool=fallback)
            batch = stack_on(device, [r for r in rows if not isinstance(r, Exception)])
            probs = classifier.logits(batch).softmax(dim=1)
            probs.topk(5, dim=1)[0].cpu()  # results back on the host, as the worker needs
    _sync(device)
    seconds = time.perf_counter() - started
    thread.join()
    return CeilingResult(
        len(files),
        seconds,
        batch_size,
        read_threads,
        torch.get_num_threads(),
        cpu_s=time.process_time() - cpu0,
    )
