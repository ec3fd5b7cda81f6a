"""``--device cuda``: the ceiling with the worker's GPU decode (:mod:`worker.batch_decode`):
files read on threads, each batch's JPEGs decoded by nvjpeg in one call, resized and cropped
there, and fed to the model without visiting host memory; other formats take Pillow.

Not yet run on a GPU (none was lent to the sessions that wrote it); the decode path itself is
tested on the CPU (tests/unit/worker/test_batch_decode.py), with its CUDA cases skipped there.
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
from worker.batch_decode import Encoded, assemble, prepare, stack_on
from worker.classifier import Classifier
from worker.preprocess import Preprocessing


def gpu_decode_batch(
    datas: Sequence[bytes], prep: Preprocessing, device: torch.device
) -> torch.Tensor:
    """uint8 NHWC batch on ``device``, decoded as the worker decodes with ``GPU_DECODE`` on:
    JPEGs in one batched call, the rest (and what the device refuses) with Pillow."""
    items: list[np.ndarray | Encoded] = []
    for data in datas:
        try:
            items.append(prepare(data, prep, MAX_PIXELS))
        except BadImage:  # fails alone in the worker; not part of the ceiling
            continue
    rows = assemble(items, prep, device, MAX_PIXELS)
    return stack_on(device, [r for r in rows if not isinstance(r, Exception)])


def run_gpu_decode_ceiling(
    classifier: Classifier, files: Sequence[Path], batch_size: int, read_threads: int = 4
) -> CeilingResult:
    """Files read on threads; each batch decoded, resized and classified on the GPU."""
    device = classifier.device
    if device.type != "cuda":
        raise RuntimeError("the GPU-decode ceiling needs --device cuda")
    warm_up(classifier, batch_size)
    prep = classifier.loaded.preprocessing
    batches: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=3)

    def reader() -> None:
        with ThreadPoolExecutor(read_threads) as pool:
            for start in range(0, len(files), batch_size):
                batches.put(list(pool.map(Path.read_bytes, files[start : start + batch_size])))
        batches.put(None)

    started = time.perf_counter()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with torch.inference_mode():
        while (datas := batches.get()) is not None:
            batch = gpu_decode_batch(datas, prep, device)
            probs = classifier.logits(batch).softmax(dim=1)
            probs.topk(5, dim=1)[0].cpu()  # results back on the host, as the worker needs
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    thread.join()
    return CeilingResult(len(files), seconds, batch_size, 0, torch.get_num_threads())
