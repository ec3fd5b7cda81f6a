"""The in-process ceiling: the worker's own preprocessing (``worker.model.preprocess``) and
classifier
(``worker.model.classifier``) in one process, decode overlapped with inference on threads, batched,
with no queue, no broker and no database. The best this hardware does for this model with this
code; the pipeline is measured against it.
"""

from __future__ import annotations

import argparse
import queue
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.harness import CpuMeter, say
from imaging.decode import BadImage
from worker.model import onnx_backend
from worker.model.classifier import Classifier
from worker.model.layout import inference_layout, usable_cores
from worker.model.modelzoo import build
from worker.model.precision import pick_autocast, pick_device
from worker.model.preprocess import Preprocessing, load_for_model

MAX_PIXELS = 100_000_000


def make_classifier(
    model: str,
    device: str,
    precision: str = "auto",
    compile_for: Sequence[int] = (),
    compile_mode: str = "auto",
    onnx_sample: Sequence[Path] = (),
) -> Classifier:
    """The classifier exactly as a worker builds it (random weights: same compute); compiled
    for ``compile_for`` batch sizes first where ``compile_mode`` (the worker's TORCH_COMPILE)
    compiles on this machine, as a busy worker's is. With ``onnx_sample``, served by ONNX
    Runtime as a CPU worker serves it: artifacts built from those files, int8 where it passed
    its check, one session on the layout rule's threads per stream."""
    loaded = build(model, "none")
    dev = pick_device(device)
    classifier = Classifier(0, loaded, dev, pick_autocast(dev, precision))
    if onnx_sample:
        images = [read_and_preprocess(p, loaded.preprocessing) for p in onnx_sample]
        folder = Path(tempfile.mkdtemp(prefix="inbox-ceiling-onnx-"))
        manifest = onnx_backend.build(
            loaded,
            folder,
            np.stack([i for i in images if i is not None]),
            None,
            weights_sha256="bench",
            built_from="benchmark images",
            min_agreement=0.99,
            margin=0.0,
        )
        entry, precision = manifest.preferred()
        threads = inference_layout(None, None, "cpu").threads_per_stream
        path = onnx_backend.serving_dir(folder) / entry.file
        classifier.use_runner(onnx_backend.OrtRunner(path, precision, threads))
    elif compile_for and classifier.compile_async(compile_for, mode=compile_mode):
        classifier.wait_compiled(600)
    return classifier


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
    streams: int = 1
    cpu_s: float = 0.0  # the process's CPU time over the timed part (all threads)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def config(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.decode_threads, self.torch_threads, self.streams)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "batch_size": self.batch_size,
            "decode_threads": self.decode_threads,
            "torch_threads": self.torch_threads,
            "streams": self.streams,
            "cpu_s": round(self.cpu_s, 2),
            "cpu_ms_per_image": round(self.cpu_s * 1000 / self.images, 2),
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
    streams: int = 1,
    topk: int = 5,
) -> CeilingResult:
    """Decode on ``decode_threads`` threads, as fast as they go, while ``streams`` inference
    threads (the worker's BatchEngine streams) each run batches of ``batch_size`` on
    ``torch_threads`` torch threads. Batches are assembled in file order on the calling thread,
    at most one ahead of each stream.

    Inference runs on threads of its own, not the caller's, as in the worker: on a 2-core CPU,
    torch driven from the main thread while decode threads compete measured ~25% slower and
    burned ~40% more CPU than the same loop driven from a plain thread."""
    prep = classifier.loaded.preprocessing
    batches: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=streams + 1)
    warmed = threading.Barrier(streams + 1)
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            torch.set_num_threads(torch_threads)  # per thread, as in the worker
            warm_up(classifier, batch_size)
        except BaseException as exc:
            errors.append(exc)
        warmed.wait()
        while (batch := batches.get()) is not None:
            if not errors:  # after a failure, keep draining so the feeder never blocks
                try:
                    classifier.predict(batch, topk)
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=stream, name=f"inference-{i}") for i in range(streams)]
    for thread in threads:
        thread.start()
    warmed.wait()
    start, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") as pool:
        futures = [pool.submit(read_and_preprocess, f, prep) for f in files]
        for first in range(0, len(futures), batch_size):
            arrays = [
                a for f in futures[first : first + batch_size] if (a := f.result()) is not None
            ]
            if arrays:
                batches.put(np.stack(arrays))
        for _ in threads:
            batches.put(None)
        for thread in threads:
            thread.join()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if errors:
        raise errors[0]
    return CeilingResult(
        len(files), seconds, batch_size, decode_threads, torch_threads, streams, cpu
    )


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
    configs: Sequence[tuple[int, int, int, int]],
) -> list[CeilingResult]:
    """Run each (batch_size, decode_threads, torch_threads, streams); the best is the ceiling."""
    return [run_ceiling(classifier, files, *config) for config in configs]


# --- the sweep bench.run starts with ---------------------------------------------------------


def ceiling_configs(device: str, cores: int) -> list[tuple[int, int, int, int]]:
    """(batch size, decode threads, torch threads per stream, streams) tried for the ceiling:
    one stream on all cores, and the worker's automatic layout, at two batch sizes."""
    auto = inference_layout(None, None, "cuda" if device.startswith("cuda") else "cpu", cores)
    if device.startswith("cuda"):  # GPU-sized batches (contract.sizing), decode on every core
        return [(bs, cores, auto.threads_per_stream, auto.streams) for bs in (256, 128)]
    layouts = [(cores, 1), (auto.threads_per_stream, auto.streams)]
    configs = [(bs, 2, t, n) for t, n in dict.fromkeys(layouts) for bs in (16, 32)]
    if auto.streams > 1:
        configs.append((16, 1, auto.threads_per_stream, auto.streams))
    return configs


def run_ceiling_phase(
    classifier: Any, files: list[Path], configs: list[tuple[int, int, int, int]]
) -> dict[str, Any]:
    runs = []
    for cfg in configs:
        with CpuMeter({}) as meter:
            result = run_ceiling(classifier, files, *cfg)
        entry = {**result.to_dict(), "cpu": meter.result}
        runs.append(entry)
        say(
            f"  ceiling bs={cfg[0]} decode={cfg[1]} torch={cfg[2]} streams={cfg[3]}: "
            f"{result.images_per_s:.1f} img/s (others on the machine: "
            f"{meter.result['other_processes_share']:.0%})"
        )
    return {"runs": runs}


@dataclass
class Ceiling:
    """The in-process ceiling's classifier and the sweep's best layout, for the paired runs."""

    classifier: Any
    best: dict[str, Any]  # the sweep's best run
    config: tuple[int, int, int, int]  # its batch size, decode threads, torch threads, streams
    gpu_decode_img_s: float | None = None  # on a GPU: the ceiling with nvjpeg decode


def measure_ceiling(
    args: argparse.Namespace,
    device: str,
    env: dict[str, str],
    files: list[Path],
    compiles: bool,
    onnx: bool,
    out: dict[str, Any],
) -> Ceiling:
    """The in-process ceiling, swept over layouts (into ``out["ceiling"]``); on a GPU also
    with nvjpeg decode."""
    say("ceiling (in-process, same preprocessing and model):")
    classifier = make_classifier(
        args.model,
        device,
        precision=env.get("INBOX_CLASSIFIER_PRECISION", "auto"),
        compile_for=(16, 1) if compiles else (),
        compile_mode=env.get("INBOX_CLASSIFIER_TORCH_COMPILE", "auto"),
        onnx_sample=files[: onnx_backend.SAMPLE_IMAGES] if onnx else (),
    )
    state = getattr(classifier, "compile_state", "eager")
    if classifier.runner is not None:
        state = classifier.backend
    out["ceiling"] = {"compile_state": state}
    say(f"  model: {state}")
    configs = ceiling_configs(device, usable_cores())
    if args.no_sweep:  # the worker's own default layout only
        configs = [c for c in configs if c[0] == 16 and c[1] == 2][-1:] or configs[:1]
    sweep = run_ceiling_phase(classifier, files, configs)
    best = max(sweep["runs"], key=lambda r: r["images_per_s"])
    best_cfg = (
        best["batch_size"],
        best["decode_threads"],
        best["torch_threads"],
        best["streams"],
    )
    out["ceiling"].update({"sweep": sweep["runs"], "best_config": best_cfg})
    if device.startswith("cuda"):
        from bench.gpu import run_gpu_decode_ceiling

        gpu = run_gpu_decode_ceiling(classifier, files, best_cfg[0])
        out["ceiling"]["gpu_decode"] = gpu.to_dict()
        say(f"  ceiling with nvjpeg GPU decode: {gpu.images_per_s:.1f} img/s")
        return Ceiling(classifier, best, best_cfg, round(gpu.images_per_s, 1))
    return Ceiling(classifier, best, best_cfg)
