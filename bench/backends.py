"""Inference backends side by side, in one process, alternating rounds::

    python -m bench.backends [--models resnet18,resnet50] [--rounds 3] [--images 256]

For each model (random init: the speed does not depend on the weights): the worker's uint8 NHWC
batches through torch fp32 (channels_last, eager), torch bf16 where the CPU runs it natively,
ONNX Runtime fp32 and ONNX Runtime int8 (worker.model.onnx_backend: built and checked as a worker
builds them, on the same images). Images/s at batch 1 and 16 for three layouts of the cores:
one stream per core with its own session ("per-stream", what the worker does), one session run
by one stream per core ("shared", ONNX Runtime only) and one stream on every core ("1 stream");
then single-image latency (an idle worker: batch 1, one stream on every core), p50 / p95.
Rounds alternate the backends so that drift in the machine's speed hits all alike; medians are
reported. Writes bench/results/backends-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.harness import machine_info
from bench.images import generate
from worker.model import modelzoo, onnx_backend
from worker.model.classifier import Classifier
from worker.model.layout import usable_cores
from worker.model.precision import native_bf16
from worker.model.preprocess import load_for_model

RESULTS = Path(__file__).parent / "results"
Logits = Callable[[np.ndarray], Any]


def streams_rate(make: Callable[[], Logits], images: np.ndarray, batch: int, streams: int) -> float:
    """Images/s with ``streams`` threads, each running its share of ``images`` in batches."""
    shares = np.array_split(np.arange(len(images)), streams)
    runners = [make() for _ in range(streams)]
    for run in runners:
        run(images[:batch])  # warm: first-call allocations and kernels
    barrier = threading.Barrier(streams + 1)

    def work(run: Logits, idx: np.ndarray) -> None:
        barrier.wait()
        for start in range(0, len(idx), batch):
            run(images[idx[start : start + batch]])

    threads = [
        threading.Thread(target=work, args=(r, i)) for r, i in zip(runners, shares, strict=True)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return len(images) / (time.perf_counter() - started)


def torch_maker(loaded: modelzoo.LoadedModel, autocast: torch.dtype | None, threads: int):  # type: ignore[no-untyped-def]
    classifier = Classifier(0, loaded, torch.device("cpu"), autocast)

    def make() -> Logits:
        def run(batch: np.ndarray) -> Any:
            torch.set_num_threads(threads)  # per thread, as the worker's streams do
            with torch.inference_mode():
                return classifier.logits(torch.from_numpy(batch))

        return run

    return make


def ort_maker(path: Path, threads: int, shared: bool):  # type: ignore[no-untyped-def]
    one = onnx_backend.open_session(path, threads) if shared else None

    def make() -> Logits:
        session = one or onnx_backend.open_session(path, threads)
        return lambda batch: session.run(None, {"images": np.ascontiguousarray(batch)})

    return make


def openvino_maker(path: Path, threads: int, shared: bool):  # type: ignore[no-untyped-def]
    """OpenVINO on the same ONNX file (it reads QDQ int8 models and runs them as int8)."""
    import openvino as ov

    core = ov.Core()

    def compile_one() -> Any:
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        return core.compile_model(str(path), "CPU", config)

    one = compile_one() if shared else None

    def make() -> Logits:
        request = (one or compile_one()).create_infer_request()
        return lambda batch: request.infer({0: np.ascontiguousarray(batch)})

    return make


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def latency_ms(run: Logits, images: np.ndarray, count: int) -> dict[str, float]:
    run(images[:1])
    times = []
    for i in range(count):
        started = time.perf_counter()
        run(images[i % len(images) : i % len(images) + 1])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50": round(statistics.median(times), 1),
        "p95": round(times[int(0.95 * (len(times) - 1))], 1),
    }


def bench_model(arch: str, images_n: int, rounds: int, work: Path) -> dict[str, Any]:
    cores = usable_cores()
    loaded = modelzoo.build(arch, "none")
    files = generate(images_n).files
    images = np.stack([load_for_model(f.read_bytes(), loaded.preprocessing, 10**8) for f in files])
    started = time.perf_counter()
    manifest = onnx_backend.build(
        loaded,
        work / arch,
        images,
        None,
        weights_sha256=arch,
        built_from=f"{len(images)} benchmark images",
        min_agreement=0.0,  # measure int8 whatever it scores; the figures say how it agreed
        margin=0.0,
        threads=cores,
        max_confidence_diff=1.0,
    )
    build_s = time.perf_counter() - started
    folder = onnx_backend.serving_dir(work / arch)
    backends: dict[str, Callable[[int, bool], Callable[[], Logits]]] = {
        "torch fp32": lambda t, _s: torch_maker(loaded, None, t),
    }
    if native_bf16(torch.device("cpu")):
        backends["torch bf16"] = lambda t, _s: torch_maker(loaded, torch.bfloat16, t)
    backends["onnxruntime fp32"] = lambda t, s: ort_maker(folder / onnx_backend.FP32_FILE, t, s)
    backends["onnxruntime int8"] = lambda t, s: ort_maker(folder / onnx_backend.INT8_FILE, t, s)
    if openvino_available():
        backends["openvino fp32"] = lambda t, s: openvino_maker(
            folder / onnx_backend.FP32_FILE, t, s
        )
        backends["openvino int8"] = lambda t, s: openvino_maker(
            folder / onnx_backend.INT8_FILE, t, s
        )
    layouts = {
        "per-stream": (cores, 1, False),
        "shared": (cores, 1, True),
        "1 stream": (1, cores, False),
    }
    samples: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for name, maker in backends.items():
            for layout, (streams, threads, shared) in layouts.items():
                if shared and name.startswith("torch"):
                    continue
                for batch in (1, 16):
                    subset = images if batch > 1 else images[: max(32, len(images) // 4)]
                    rate = streams_rate(maker(threads, shared), subset, batch, streams)
                    samples.setdefault(f"{name} | {layout} | bs{batch}", []).append(rate)
        print(f"  {arch}: round {round_ + 1}/{rounds} done", flush=True)
    latency = {
        name: latency_ms(maker(cores, False)(), images, 40) for name, maker in backends.items()
    }
    check = manifest.int8_check
    return {
        "model": arch,
        "images": len(images),
        "build_seconds": round(build_s, 1),
        "export_max_abs_diff": manifest.fp32.max_abs_diff,
        "int8_agreement": check.agreement if check else None,
        "int8_max_confidence_diff": check.max_confidence_diff if check else None,
        "images_per_s": {k: round(statistics.median(v), 1) for k, v in samples.items()},
        "latency_ms_bs1": latency,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"machine": machine_info("cpu"), "models": []}
    with tempfile.TemporaryDirectory(prefix="inbox-backends-") as tmp:
        for arch in args.models.split(","):
            result = bench_model(arch.strip(), args.images, args.rounds, Path(tmp))
            out["models"].append(result)
            print(json.dumps(result, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"backends-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
