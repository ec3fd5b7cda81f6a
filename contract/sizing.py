"""Batch sizes for GPU workers. The CPU defaults (``BATCH_SIZE`` 16, ``FILES_PER_MESSAGE`` 16)
keep a CPU's latency low; a GPU needs far larger batches to be busy, and its watcher larger
messages to feed them. ``up`` applies these where it sees GPUs (before its children read their
settings, so the watcher packs messages to match), and so does a ``worker`` started alone on a
GPU; a value the user set is never changed.

The sizes are chosen, not yet measured on a GPU (README, "GPU workers"): the largest batch whose
activations stay well inside a 16 GB card at bf16, and messages a quarter of a batch, so a
batch fills from 4 messages and a crash redelivers at most one message's files per message.
"""

from __future__ import annotations

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


def sized_for_cuda(settings: Settings) -> Settings:
    """``settings`` with GPU-sized ``batch_size`` and ``files_per_message``, where the user
    set neither (by variable, ``.env`` or flag)."""
    batch, files = CUDA_SIZES.get(settings.model, CUDA_DEFAULT)
    chosen = settings.model_fields_set
    update: dict[str, int] = {}
    if "batch_size" not in chosen:
        update["batch_size"] = batch
    if "files_per_message" not in chosen:
        update["files_per_message"] = files
    return settings.model_copy(update=update) if update else settings
