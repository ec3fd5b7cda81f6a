"""How a worker spreads inference over its cores: how many batches run through the model at
once (streams, one thread each), how many torch threads each one uses, and how many messages
the worker holds to keep them fed.

On a CPU, independent streams beat one batch on many threads: intra-op parallelism syncs the
threads at every layer, so a second thread adds far less than a second stream (figures in the
docs/architecture.md, "Batching and inference streams"). So ``auto`` runs one stream per core, up to
:data:`MAX_AUTO_STREAMS`; beyond that the cores are shared out as threads. A GPU runs
:data:`GPU_STREAMS`, each on its own CUDA stream: while one runs its batch through the model,
the other decodes and copies the next (``worker.classify.batching``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from contract.settings import Settings

MAX_AUTO_STREAMS = 4
GPU_STREAMS = 2


@dataclass(frozen=True)
class InferenceLayout:
    streams: int
    threads_per_stream: int


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def auto_streams(device_type: str, cores: int) -> int:
    return min(cores, MAX_AUTO_STREAMS) if device_type == "cpu" else GPU_STREAMS


def inference_layout(
    streams: int | None, torch_threads: int | None, device_type: str, cores: int | None = None
) -> InferenceLayout:
    """``streams`` and ``torch_threads`` as configured (None: automatic) on ``device_type``."""
    cores = cores or usable_cores()
    count = streams or auto_streams(device_type, cores)
    return InferenceLayout(count, torch_threads or max(1, cores // count))


def worker_concurrency(settings: Settings) -> int:
    """Messages a classify worker holds at once: enough for a batch per inference stream plus
    two more being decoded, so a stream never waits for a message to arrive and decode. Not
    more: every file held is one more that a crash redelivers."""
    if settings.worker_concurrency:
        return settings.worker_concurrency
    # The device is not known here (the parent of a worker must not touch CUDA): assume a
    # CPU's streams; a GPU worker then just holds a few messages more.
    streams = settings.inference_streams or auto_streams("cpu", usable_cores())
    return max(2, -(-(streams + 2) * settings.batch_size // settings.files_per_message))
