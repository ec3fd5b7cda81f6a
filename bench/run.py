"""One command for the whole benchmark (issue #4)::

    python -m bench.run --images 600 [--model resnet18] [--device cpu|cuda] [--repeat 3]
                        [--soak 20000 [--soak-only]] [--no-naive] [--no-scale-out]
                        [--set BATCH_WAIT_MS=10]

On one image set, model and machine it measures, in this order:

1. the in-process ceiling (worker.model.preprocess + worker.model.classifier, decode threads
overlapped
   with batched inference, no queue, no DB), swept over batch sizes and layouts (one stream
   on all cores, and the worker's automatic streams): the best is the ceiling;
2. the pipeline, started as users start it (``inbox-classifier up --weights none
   --no-trainer --no-beat``): files staged on the same filesystem and renamed into the inbox in
   one burst; images/s from the first rename to the last row committed, and drop->row latency
   per image. Ceiling, pipeline, scale-out and naive runs alternate (``--repeat``) so that
   drift in the machine's speed and load from anything else on it hit all alike; medians are
   reported;
3. scale-out: the same burst through 2 worker processes (the cores split between them: one
   stream, one torch thread, one decode thread each) vs the one default worker;
4. idle latency: single files dropped one at a time into the idle pipeline;
5. the naive baseline (bench/naive.py): a Celery task per image, fp32, batch 1, plain PIL +
   torchvision transforms, one ORM commit per row;
6. with ``--soak N``: N more images in waves, worker RSS after each wave.

It prints a summary and writes everything, with machine info, to bench/results/<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ceiling as ceil
from bench.ceiling import Ceiling, measure_ceiling
from bench.harness import CpuMeter, GpuSampler, gpu_memory_mib, machine_info, rmtree, say
from bench.images import generate
from bench.naive import NaiveBaseline
from bench.pipeline import Pipeline
from bench.run_summary import TARGETS, pipeline_cpu_ms, summarise, targets_met
from bench.soak import soak
from worker.model import onnx_backend
from worker.model.classifier import compile_blocker
from worker.model.precision import pick_autocast, pick_device

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600, help="images per burst (default 600)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    parser.add_argument("--repeat", type=int, default=3, help="ceiling/pipeline pairs (median)")
    parser.add_argument("--idle", type=int, default=30, help="single drops for idle latency")
    parser.add_argument("--idle-pause", type=float, default=0.5, help="seconds between drops")
    parser.add_argument("--naive-images", type=int, default=None, help="default: --images")
    parser.add_argument("--naive-pool", default="solo", choices=["solo", "prefork"])
    parser.add_argument("--naive-concurrency", type=int, default=1)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--no-scale-out", action="store_true")
    parser.add_argument("--no-sweep", action="store_true", help="ceiling: first config only")
    parser.add_argument("--soak", type=int, default=0, help="images for the RSS soak (0: skip)")
    parser.add_argument("--soak-wave", type=int, default=1000, help="images per soak wave")
    parser.add_argument("--soak-only", action="store_true", help="run the soak alone")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline setting, e.g. BATCH_WAIT_MS=10 (as INBOX_CLASSIFIER_<NAME>)",
    )
    parser.add_argument(
        "--image-bases",
        type=int,
        default=None,
        help="make the images from this many photo-like bases (fast; bench.images)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, DBs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if args.soak_only and not args.soak:
        parser.error("--soak-only needs --soak N")
    return args


def worker_compiles(device: str, env: dict[str, str]) -> bool:
    """Whether a worker with these settings compiles its model on this machine."""
    dev = pick_device(device)
    autocast = pick_autocast(dev, env.get("INBOX_CLASSIFIER_PRECISION", "auto"))
    mode = env.get("INBOX_CLASSIFIER_TORCH_COMPILE", "auto")
    return compile_blocker(mode, dev, autocast) is None


def worker_serves_onnx(device: str, env: dict[str, str]) -> bool:
    """Whether a worker with these settings serves with ONNX Runtime (worker.model.serving) here."""
    backend = env.get("INBOX_CLASSIFIER_INFERENCE_BACKEND", "auto")
    return (
        pick_device(device).type == "cpu"
        and backend != "torch"
        and onnx_backend.unavailable() is None
    )


def settings_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        env["INBOX_CLASSIFIER_" + name.strip().upper()] = value.strip()
    return env


@dataclass
class Contenders:
    """What runs against the ceiling in each round: the pipeline, and optionally the same
    burst through two worker processes and the naive baseline."""

    pipe: Pipeline
    two: Pipeline | None
    two_env: dict[str, str]
    naive: NaiveBaseline | None
    naive_files: list[Path]

    def stop(self) -> None:
        self.pipe.stop()
        if self.two is not None:
            self.two.stop()
        if self.naive is not None:
            self.naive.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {
        "machine": machine_info(device),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": TARGETS,
    }
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="inbox-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"work dir {work}; {out['machine']['cpu_model']}, {out['machine']['cores']} cores")

    images = generate(args.images, bases=args.image_bases)
    # Warm-up: enough files for a worker to compile its model (variants: distinct content).
    env = settings_env(args.set)
    onnx = worker_serves_onnx(device, env)
    compiles = worker_compiles(device, env) and not onnx
    # A worker compiles its model after it served COMPILE_AFTER_IMAGES (256) images: warm past it.
    warm_count = 256 + 64 if compiles else 64
    if onnx:  # the worker builds its ONNX artifacts from its first images, then switches
        warm_count = onnx_backend.SAMPLE_IMAGES + 64
    warm = images.files[:warm_count]
    warm_rounds = -(-warm_count // len(warm))
    out["images"] = images.describe()
    say(f"images: {images.describe()['mix']} ({images.total_bytes / 2**20:.0f} MiB)")
    if args.soak_only:
        out["soak"] = soak(work / "soak", args, device, env, warm, warm_rounds)
        soak_summary = {
            "soak_images": args.soak,
            "soak_rss_growth_pct": out["soak"]["rss_growth_pct"],
            "soak_rss_mib_first_wave_last_wave": [
                out["soak"]["waves"][1]["rss_mib"],
                out["soak"]["waves"][-1]["rss_mib"],
            ],
            "soak_busy_rss_mib_range": out["soak"]["busy_rss_mib_range"],
        }
        return report(out, soak_summary, args, device, started, work, kind="soak")

    # 1. the ceiling sweep
    ceiling = measure_ceiling(args, device, env, images.files, compiles, onnx, out)
    # 2./3./4./5. pipeline, scale-out and naive runs, alternating with the ceiling; idle latency
    contenders = start_contenders(args, device, env, work, images.files)
    try:
        pairs, warmup = run_rounds(args, ceiling, contenders, images.files, warm, warm_rounds, out)
    finally:
        contenders.stop()
    out["pipeline"] = {
        "warmup": warmup,
        "compile": contenders.pipe.compile_outcome,
        "settings_env": env,
        "pairs": pairs,
    }
    summary = summarise(pairs, ceiling.best, ceiling.config, out["idle"]["latency"])
    if ceiling.gpu_decode_img_s is not None:
        summary["gpu_decode_ceiling_img_s"] = ceiling.gpu_decode_img_s
    summary["process_rss_mib"] = out["process_rss_mib"]
    if out["gpu_memory_mib"]:
        summary["gpu_memory_mib"] = out["gpu_memory_mib"]
    if contenders.two is not None:
        out["scale_out"] = {
            "workers": 2,
            "settings_env": contenders.two_env,
            "compile": contenders.two.compile_outcome,
            "bursts": [x["two_workers"] for x in pairs],
        }
        say(
            f"  2 workers: {summary['two_workers_img_s']:.1f} img/s "
            f"({summary['two_over_one_worker']:.2f}x one worker)"
        )
    if contenders.naive is not None:
        out["naive"] = {"runs": [x["naive"] for x in pairs]}
        say(
            f"  naive: {summary['naive_img_s']:.1f} img/s "
            f"(the pipeline: {summary['pipeline_over_naive']:.2f}x)"
        )

    # 6. soak
    if args.soak:
        out["soak"] = soak(work / "soak", args, device, env, warm, warm_rounds)
        summary["soak_images"] = args.soak
        summary["soak_rss_growth_pct"] = out["soak"]["rss_growth_pct"]

    summary["targets_met"] = targets_met(summary)
    return report(out, summary, args, device, started, work)


def start_contenders(
    args: argparse.Namespace, device: str, env: dict[str, str], work: Path, files: list[Path]
) -> Contenders:
    """The pipelines and the naive baseline (not started yet)."""
    pipe = Pipeline(work / "pipeline", args.model, device, settings_env=env)
    # Scale-out: the cores split between 2 worker processes, one stream and thread each.
    two_env = {
        "INBOX_CLASSIFIER_INFERENCE_STREAMS": "1",
        "INBOX_CLASSIFIER_TORCH_THREADS": "1",
        "INBOX_CLASSIFIER_DECODE_THREADS": "1",
        **env,
    }
    two = None
    if not args.no_scale_out:
        two = Pipeline(work / "pipeline2", args.model, device, workers=2, settings_env=two_env)
    naive = None
    if not args.no_naive:
        naive = NaiveBaseline(
            work / "naive",
            args.model,
            device=device,
            pool=args.naive_pool,
            concurrency=args.naive_concurrency,
        )
    return Contenders(pipe, two, two_env, naive, files[: args.naive_images or args.images])


def run_rounds(
    args: argparse.Namespace,
    ceiling: Ceiling,
    contenders: Contenders,
    files: list[Path],
    warm: list[Path],
    warm_rounds: int,
    out: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Starts the contenders, then ``args.repeat`` rounds of a ceiling run and a burst through
    each, so that drift in the machine's speed hits all alike; then the idle latency. Returns
    the rounds and the pipeline's warm-up."""
    pipe, two, naive = contenders.pipe, contenders.two, contenders.naive
    say(f"pipeline: inbox-classifier up ({pipe.settings_env or 'default settings'})")
    t0 = time.time()
    warmup = pipe.start(warm, rounds=warm_rounds)
    rss_start = pipe.worker_rss_mib()
    rss_all_start = pipe.rss_mib()
    say(
        f"  up and warm in {time.time() - t0:.1f}s (model {pipe.compile_outcome}, "
        f"worker RSS {rss_start} MiB)"
    )
    if two is not None:
        say("scale-out: 2 worker processes (1 stream, 1 torch thread, 1 decode thread each)")
        # Each worker must see enough images to compile (where it compiles).
        two.start(warm, rounds=2 * warm_rounds)
    if naive is not None:
        say(f"naive baseline ({args.naive_pool}, {len(contenders.naive_files)} images a run)")
        naive.start(warm[:8])
    pairs = []
    for i in range(args.repeat):
        with CpuMeter({}) as meter:
            c = ceil.run_ceiling(ceiling.classifier, files, *ceiling.config)
        c_entry = {**c.to_dict(), "cpu": meter.result}
        with GpuSampler() as sampler:
            p = pipe.run_burst(files)
        p_entry = {**p.to_dict(), "gpu": sampler.result}
        pairs.append({"ceiling": c_entry, "pipeline": p_entry})
        line = (
            f"  run {i + 1}: ceiling {c.images_per_s:.1f} img/s, pipeline "
            f"{p.images_per_s:.1f} img/s (ratio {p.images_per_s / c.images_per_s:.2f}); "
            f"latency p50/p95/p99 {p_entry['latency']['p50_ms']:.0f}/"
            f"{p_entry['latency']['p95_ms']:.0f}/{p_entry['latency']['p99_ms']:.0f} ms; "
            f"first row after {p.first_row_s * 1000:.0f} ms; CPU ms/image "
            f"{c.cpu_s * 1000 / c.images:.0f}/{pipeline_cpu_ms(p_entry):.0f}; others "
            f"on the machine {meter.result['other_processes_share']:.0%}/"
            f"{p.cpu['other_processes_share']:.0%}"
        )
        stages = ", ".join(f"{k} {v:.2f}" for k, v in p.stages_ms.items())
        line += f"; ms/image by stage: {stages or 'no events'}"
        if sampler.result:
            line += f"; GPU busy {sampler.result['utilisation_mean_pct']:.0f}% (mean)"
        if two is not None:
            b2 = two.run_burst(files)
            pairs[-1]["two_workers"] = b2.to_dict()
            line += f"; 2 workers {b2.images_per_s:.1f} img/s"
        if naive is not None:
            pairs[-1]["naive"] = n = naive.run_burst(contenders.naive_files)
            line += f"; naive {n['images_per_s']:.1f} img/s"
        say(line)
    idle = pipe.idle_latency(generate(args.idle, seed=7).files, args.idle_pause)
    out["idle"] = idle.to_dict()
    say(
        f"  idle latency ({args.idle} single drops): p50 {idle.to_dict()['latency']['p50_ms']}"
        f" ms, p95 {idle.to_dict()['latency']['p95_ms']} ms"
    )
    out["pipeline_rss_mib"] = {"after_warmup": rss_start, "end": pipe.worker_rss_mib()}
    out["process_rss_mib"] = {"after_warmup": rss_all_start, "end": pipe.rss_mib()}
    out["gpu_memory_mib"] = gpu_memory_mib(pipe.named_pids())
    return pairs, warmup.to_dict()


def report(
    out: dict[str, Any],
    summary: dict[str, Any],
    args: argparse.Namespace,
    device: str,
    started: float,
    work: Path,
    kind: str = "bench",
) -> int:
    out["summary"] = summary
    out["wall_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"{kind}-{args.model}-{device}-{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    say("")
    say(json.dumps(summary, indent=2))
    say(f"results: {path} ({out['wall_s']:.0f}s)")
    if not args.keep and args.work_dir is None:
        rmtree(work)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
