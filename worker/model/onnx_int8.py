"""int8 for ONNX Runtime: static quantization of the exported fp32 model (QDQ, per-channel int8
weights, uint8 activations, ranges calibrated by MinMax on the user's own images), and the check
that decides whether it may serve: top-1 agreement with fp32, no confidence moved beyond a
tolerance, and no accuracy lost beyond the gate's margin where labels are known
(docs/architecture.md, "ONNX Runtime and int8")."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.serving import Int8Check

#: int8 serves only if no check image's top-1 confidence (calibrated) moved more than this.
CONFIDENCE_TOLERANCE = 0.05


def quantize_bytes(fp32_path: Path, images: np.ndarray, work: Path) -> bytes:
    """Static int8 (QDQ, per-channel weights, uint8 activations: the U8S8 kernels x86 runs
    fastest), its activation ranges calibrated (MinMax) on ``images``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(images, max(1, len(images) // 16)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": np.ascontiguousarray(batch)}

    out = work / "quantized.onnx"
    with _quiet_quantizer():
        quantize_static(
            str(fp32_path),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    data = out.read_bytes()
    out.unlink()
    return data


class _QuantizerNoise(logging.Filter):
    """The quantizer logs on the root logger, per layer ("Expected bias ... to be an
    initializer", "consider pre-processing"): advice for hand-tuning, noise in a worker's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    noise = _QuantizerNoise()
    root = logging.getLogger()
    root.addFilter(noise)
    try:
        yield
    finally:
        root.removeFilter(noise)


@dataclass(frozen=True)
class Int8Limits:
    min_agreement: float  # INT8_MIN_AGREEMENT
    margin: float  # GATE_MARGIN: how much less accurate than fp32 int8 may be
    max_confidence_diff: float


def check_int8(
    fp32: np.ndarray,
    int8: np.ndarray,
    labels: Sequence[int] | None,
    *,
    min_agreement: float,
    margin: float,
    temperature: float = 1.0,
    max_confidence_diff: float = CONFIDENCE_TOLERANCE,
) -> Int8Check:
    """Does the int8 model answer as fp32 does? ``fp32``/``int8``: logits of the same images."""
    top_fp32, top_int8 = fp32.argmax(1), int8.argmax(1)
    agreement = float((top_fp32 == top_int8).mean())
    p32, p8 = _softmax(fp32 / temperature), _softmax(int8 / temperature)
    rows = np.arange(len(fp32))
    diff = float(np.abs(p32[rows, top_fp32] - p8[rows, top_fp32]).max())
    acc32 = acc8 = None
    if labels is not None:
        truth = np.asarray(labels)
        acc32, acc8 = float((top_fp32 == truth).mean()), float((top_int8 == truth).mean())
    failures = []
    if agreement < min_agreement:
        failures.append(f"top-1 agreement {agreement:.3f} < INT8_MIN_AGREEMENT {min_agreement}")
    if diff > max_confidence_diff:
        failures.append(f"a confidence moved by {diff:.3f} > {max_confidence_diff}")
    if acc32 is not None and acc8 is not None and acc8 < acc32 - margin:
        failures.append(f"int8 accuracy {acc8:.3f} < fp32 {acc32:.3f} - margin {margin}")
    reason = "; ".join(failures) or (
        f"top-1 agreement {agreement:.3f} on {len(fp32)} images ≥ {min_agreement}"
    )
    return Int8Check(len(fp32), agreement, diff, acc32, acc8, not failures, reason)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return out


