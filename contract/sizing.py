"""Batch sizes, decided here and only here. The CPU defaults (``BATCH_SIZE`` 16,
``FILES_PER_MESSAGE`` 16, in :mod:`contract.settings`) keep a CPU's latency low; a GPU needs far
larger batches to be busy, and its watcher larger messages to feed them. ``up`` applies
:func:`sized_for_machine` before its children read their settings (so the watcher packs
messages to match), and so does a ``worker`` started alone; a value the user set (a flag, a
variable or ``.env``) is never changed.

The sizes are chosen, not yet measured on a GPU (docs/architecture.md, "GPU workers"): the
largest batch whose
activations stay well inside a 16 GB card at bf16, and messages a quarter of a batch, so a
batch fills from 4 messages and a crash redelivers at most one message's files per message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from contract.settings import Settings

#: model name -> (batch_size, files_per_message) on a GPU.
CUDA_SIZES: dict[str, tuple[int, int]] = {
    "resnet18": (256, 64),
    "resnet34": (256, 64),
    "mobilenet_v3_small": (256, 64),
    "mobilenet_v3_large": (256, 64),
    "efficientnet_b0": (256, 64),
    "resnet50": (128, 32),
    "resnet101": (128, 32),
    "convnext_tiny": (128, 32),
}
#: Any other model: larger than the CPU's, smaller than resnet18's.
CUDA_DEFAULT = (128, 32)


#: A worker process keeps about this many cores busy with its per-file work at full speed
#: (measured on an H200 host: 4.1 cores for one resnet18 worker at 992 img/s).
CORES_PER_GPU_WORKER = 4
MAX_WORKERS_PER_GPU = 4


def workers_per_gpu(settings: Settings, gpus: int, cores: int) -> int:
    """Classify processes per GPU: ``WORKERS_PER_GPU`` where set, else one per
    :data:`CORES_PER_GPU_WORKER` cores of this GPU's share, 1 to :data:`MAX_WORKERS_PER_GPU`.
    Several processes, each with its own CUDA context, feed one GPU where one process's
    Python work (read, hash, probe, rows) would cap it."""
    if settings.workers_per_gpu is not None:
        return settings.workers_per_gpu
    share = cores // max(1, gpus)
    return max(1, min(MAX_WORKERS_PER_GPU, share // CORES_PER_GPU_WORKER))


def sized_for_cuda(settings: Settings, gpus: int = 1, cores: int | None = None) -> Settings:
    """``settings`` with GPU-sized ``batch_size``, ``files_per_message`` and
    ``decode_threads`` (this machine's cores shared out among its GPU workers), where the user
    set none of them (by variable, ``.env`` or flag)."""
    batch, files = CUDA_SIZES.get(settings.model, CUDA_DEFAULT)
    cores = cores or os.cpu_count() or 1
    processes = max(1, gpus) * workers_per_gpu(settings, gpus, cores)
    chosen = settings.model_fields_set
    update: dict[str, int] = {}
    if "batch_size" not in chosen:
        update["batch_size"] = batch
    if "files_per_message" not in chosen:
        update["files_per_message"] = files
    if "decode_threads" not in chosen:
        update["decode_threads"] = max(2, cores // processes)
    return settings.model_copy(update=update) if update else settings


def visible_gpus() -> list[str]:
    """GPU ids this machine offers this process, without touching CUDA (a parent process must
    not): ``CUDA_VISIBLE_DEVICES`` where it is set, else ``nvidia-smi -L``."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [d.strip() for d in pinned.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def sized_for_machine(settings: Settings, gpus: Sequence[str] | None = None) -> Settings:
    """``settings`` with the batch sizes for where they run: GPU-sized
    (:func:`sized_for_cuda`) where there are GPUs (``gpus``, default :func:`visible_gpus`) and
    the device is not pinned to the CPU; the CPU defaults otherwise."""
    if settings.device == "cpu":
        return settings
    if gpus is None:
        gpus = visible_gpus()
    return sized_for_cuda(settings, len(gpus)) if gpus else settings
