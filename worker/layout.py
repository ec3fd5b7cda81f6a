"""How a worker spreads inference over its cores: how many batches run through the model at
once (streams, one thread each), and how many torch threads each one uses.

On a CPU, independent streams beat one batch on many threads: intra-op parallelism syncs the
threads at every layer, and on the 2-core VM this was measured on a second thread added only
1.0-1.4x (resnet18; bs1 no faster at all), while two streams of one thread each ran 1.3-1.4x
the images of one stream on two. So ``auto`` runs one stream per core, up to
:data:`MAX_AUTO_STREAMS`; beyond that the cores are shared out as threads. A GPU runs one
stream: its kernels queue on one device anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_AUTO_STREAMS = 4


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
    return min(cores, MAX_AUTO_STREAMS) if device_type == "cpu" else 1


def inference_layout(
    streams: int | None, torch_threads: int | None, device_type: str, cores: int | None = None
) -> InferenceLayout:
    """``streams`` and ``torch_threads`` as configured (None: automatic) on ``device_type``."""
    cores = cores or usable_cores()
    count = streams or auto_streams(device_type, cores)
    return InferenceLayout(count, torch_threads or max(1, cores // count))
