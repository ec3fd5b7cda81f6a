"""Where a model runs and in which float precision: one rule for inference and training.

bf16 autocast is used only where the hardware runs it natively (CUDA with bf16; a CPU with
AVX512-BF16 or AMX): elsewhere it would be emulated and slower than fp32. fp16 is an inference
precision only: training in fp16 needs loss scaling, which the training loop does not do, so
training falls back to fp32 where inference would pick fp16.
"""

from __future__ import annotations

import torch


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist in this process."""


def pick_device(spec: str) -> torch.device:
    """'auto' (CUDA if visible, else CPU), 'cpu' or 'cuda[:n]'. Raises
    :class:`DeviceUnavailable` for a CUDA device this process cannot see."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                "CUDA is not available to this process (no NVIDIA GPU, driver or CUDA build of "
                "torch); use auto (the GPU when there is one, else the CPU) or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"there is no GPU {device.index}: this process sees "
                f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES renumbers them from 0)"
            )
    return device


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def pick_autocast(
    device: torch.device, precision: str = "auto", *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ('auto' | 'fp32' | 'bf16' | 'fp16'), or None for
    plain fp32."""
    chosen: torch.dtype | None
    if precision == "fp32":
        chosen = None
    elif precision == "bf16":
        chosen = torch.bfloat16
    elif precision == "fp16":
        chosen = torch.float16
    elif native_bf16(device):
        chosen = torch.bfloat16
    else:
        chosen = torch.float16 if device.type == "cuda" else None
    if training and chosen == torch.float16:
        return None
    return chosen
