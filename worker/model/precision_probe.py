"""Which float precision a CPU runs a model fastest in, measured, not read off its flags.

A CPU that reports AVX512-BF16 may run bf16 natively and fast (with AMX: several times fp32) or
slowly (an Intel Xeon with AVX512-BF16 and no AMX ran resnet18 in bf16 at a third of its fp32
speed). So where bf16 is on offer at all, a worker times a few real batches of its model in
fp32 (channels-last) and in bf16 autocast, on the threads it will use, and keeps the faster:
bf16 only where it wins by :data:`MARGIN`. The answer is kept per machine, torch version,
model, input size and threads in ``<data_dir>/probes.json``, so a restart does not measure
again; it is logged, and the version's serving record says it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PROBE_FILE = "probes.json"
BATCH = 4
ROUNDS = 2  # timed, after one warm-up each
MARGIN = 1.10  # bf16 must be this much faster to be chosen
_lock = threading.Lock()


@dataclass(frozen=True)
class Probe:
    chosen: str  # "fp32" | "bf16"
    fp32_img_s: float
    bf16_img_s: float
    threads: int
    batch: int

    def summary(self) -> str:
        return (
            f"{self.chosen}: measured fp32 {self.fp32_img_s:.1f} img/s, bf16 "
            f"{self.bf16_img_s:.1f} img/s (batch {self.batch}, {self.threads} thread(s))"
        )


def machine_key(arch: str, crop: int, threads: int) -> str:
    """What the answer depends on: this CPU, torch, the model and input size, the threads."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += line
                if line.startswith("flags"):
                    break
    digest = hashlib.sha256(cpu.encode()).hexdigest()[:16]
    return f"{digest}/torch-{torch.__version__}/{arch}/{crop}px/{threads}t"


def _rate(model: torch.nn.Module, crop: int, dtype: torch.dtype | None) -> float:
    batch = torch.randint(0, 255, (BATCH, 3, crop, crop), dtype=torch.uint8).float()
    batch = batch.contiguous(memory_format=torch.channels_last)
    context = (
        torch.autocast("cpu", dtype=dtype, cache_enabled=False)
        if dtype is not None
        else contextlib.nullcontext()
    )
    best = float("inf")
    with torch.inference_mode(), context:
        model(batch)  # warm-up: one-time kernel selection
        for _ in range(ROUNDS):
            started = time.perf_counter()
            model(batch)
            best = min(best, time.perf_counter() - started)
    return BATCH / best


def measure(model: torch.nn.Module, crop: int) -> Probe:
    """Time the model in fp32 and bf16 on this thread's torch threads (a few seconds)."""
    model = model.eval().to(memory_format=torch.channels_last)
    fp32 = _rate(model, crop, None)
    bf16 = _rate(model, crop, torch.bfloat16)
    chosen = "bf16" if bf16 > fp32 * MARGIN else "fp32"
    return Probe(chosen, round(fp32, 2), round(bf16, 2), torch.get_num_threads(), BATCH)


def cpu_precision(model: torch.nn.Module, arch: str, crop: int, cache_dir: Path) -> Probe:
    """The measured answer for this machine and model, from the cache or measured now."""
    key = machine_key(arch, crop, torch.get_num_threads())
    path = cache_dir / PROBE_FILE
    with _lock:
        cached = _read(path).get(key)
        if cached is not None:
            with contextlib.suppress(TypeError):
                return Probe(**cached)
        started = time.monotonic()
        probe = measure(model, crop)
        log.info(
            "precision probe for %s at %d px took %.1f s: %s",
            arch,
            crop,
            time.monotonic() - started,
            probe.summary(),
        )
        _write(path, key, probe)
        return probe


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, probe: Probe) -> None:
    """Temp file and rename: several workers may write at once; the last one wins."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = asdict(probe)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
