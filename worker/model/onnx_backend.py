"""ONNX Runtime serving for CPU workers: a version exported once to ONNX, quantized to int8 on
the user's own images, and kept at int8 only if it agrees with fp32.

Version N's artifacts live in ``<models>/N/serving/``: ``model.onnx`` (fp32), ``model.int8.onnx``
(static QDQ quantization, per-channel weights) and ``serving.json``, the manifest: the files'
sha256, what the artifacts were built from (the weights' sha256), the export check and the int8
agreement check. The folder is built under a temporary name and renamed into place, like a
version's weights, so a reader sees all of it or none; :func:`load_manifest` refuses files
whose hash differs from the manifest's.

The graph takes the worker's batches as they are (uint8, NHWC) and normalises inside (a Cast,
Sub and Div before the first convolution), so a batch crosses into ONNX Runtime without a
float copy made in numpy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.serving import Artifact, Int8Check, ServingManifest
from worker.model.modelzoo import LoadedModel
from worker.model.onnx_int8 import (
    CONFIDENCE_TOLERANCE,
    Int8Limits,
    check_int8,
    quantize_bytes,
)

__all__ = ["CONFIDENCE_TOLERANCE", "check_int8", "quantize_bytes"]

log = logging.getLogger(__name__)

SERVING_DIR = "serving"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
MANIFEST_FILE = "serving.json"
OPSET = 17

#: The export must reproduce torch's fp32 logits to this (max abs difference; docs/architecture.md).
EXPORT_TOLERANCE = 1e-3
#: Most images a build uses: every other one calibrates the int8 ranges, the rest check it.
SAMPLE_IMAGES = 256
#: The export is checked against torch on this many of them (torch is the slow side).
EXPORT_CHECK_IMAGES = 16
#: Random images the interim export (:func:`interim_runner`) is checked on.
INTERIM_CHECK_IMAGES = 4
#: Fewer check images than this and the int8 model is not built: agreement on a handful of
#: images says nothing.
MIN_CHECK_IMAGES = 32


class ServingError(RuntimeError):
    """The artifacts cannot be built or used; the message says why."""


class ArtifactRefused(ServingError):
    """Artifacts on disk that must not be served (tampered, missing, built for other weights)."""


def unavailable() -> str | None:
    """Why ONNX Runtime cannot serve here, or None."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install onnxruntime onnx)"
    return None


def serving_dir(version_dir: Path) -> Path:
    return version_dir / SERVING_DIR


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- export --------------------------------------------------------------------------------------


class _Normalised(nn.Module):
    """uint8 NHWC in, logits out: the worker's batches need no conversion."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        prep = loaded.preprocessing
        self.model = loaded.model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        logits: torch.Tensor = self.model((x - self.mean) / self.std)
        return logits


def export_bytes(loaded: LoadedModel) -> bytes:
    """``loaded`` (on the CPU) as an fp32 ONNX graph with a dynamic batch axis."""
    crop = loaded.preprocessing.crop
    module = _Normalised(loaded).eval().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter: the torch.export one needs onnxscript and traces slower.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros((2, crop, crop, 3), dtype=torch.uint8),),
            buffer,  # type: ignore[arg-type]  # a file object works and is documented
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return _initializers_for_identities(buffer.getvalue())


def _initializers_for_identities(model_bytes: bytes) -> bytes:
    """The exporter shares equal weights (all-zero biases of a fresh BatchNorm folded into its
    convolution) through Identity nodes. The quantizer needs a Conv's bias to be an
    initializer to fuse it into an int8 convolution; behind an Identity it leaves the layer
    in fp32 between a Dequantize and a Quantize, slower than no quantization at all. So each
    such Identity becomes an initializer of its own."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        source = initializers.get(node.input[0])
        if source is None:
            continue
        graph.initializer.append(
            numpy_helper.from_array(numpy_helper.to_array(source), node.output[0])
        )
        graph.node.remove(node)
    return bytes(model.SerializeToString())


def torch_logits(loaded: LoadedModel, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Reference fp32 logits from torch, for the export check."""
    module = _Normalised(loaded).eval().cpu()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(module(torch.from_numpy(images[start : start + batch_size])).numpy())
    return np.concatenate(out)


# --- sessions ------------------------------------------------------------------------------------


def open_session(model: Path | bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.ascontiguousarray(images[start : start + batch_size])
        out.append(session.run(None, {"images": chunk})[0])
    return np.concatenate(out).astype(np.float32, copy=False)


# --- build and load ------------------------------------------------------------------------------


def interim_runner(loaded: LoadedModel, threads: int) -> OrtRunner:
    """ONNX Runtime fp32 from an export made now, in memory, for a version that has no
    artifacts yet: it serves while the worker collects the first images to build them from
    (int8 needs real images to calibrate on and to be checked against; fp32 does not). The
    export is checked against torch on random images: the check is of the arithmetic, not of
    accuracy. Raises :class:`ServingError` if it differs."""
    model = export_bytes(loaded)
    crop = loaded.preprocessing.crop
    images = np.random.default_rng(0).integers(
        0, 256, (INTERIM_CHECK_IMAGES, crop, crop, 3), dtype=np.uint8
    )
    runner = OrtRunner(model, "fp32", threads)
    export_difference(runner.logits(images), torch_logits(loaded, images))
    return runner


def export_difference(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> float:
    """The largest difference between the export's logits and torch's; raises
    :class:`ServingError` beyond :data:`EXPORT_TOLERANCE`."""
    diff = float(np.abs(onnx_logits - torch_logits).max())
    if not diff <= EXPORT_TOLERANCE:
        raise ServingError(
            f"the ONNX export differs from torch by {diff:.2e} on the logits "
            f"(tolerance {EXPORT_TOLERANCE:g}); serving with torch"
        )
    return diff


def build(
    loaded: LoadedModel,
    version_dir: Path,
    images: np.ndarray,
    labels: Sequence[int] | None,
    *,
    weights_sha256: str,
    built_from: str,
    min_agreement: float,
    margin: float,
    threads: int = 1,
    max_confidence_diff: float = CONFIDENCE_TOLERANCE,
) -> ServingManifest:
    """Export, verify, quantize and check ``loaded``; write ``version_dir/serving/`` atomically.
    ``images``: uint8 NHWC at the model's input size (the validation split with its
    ``labels``, or the first images a worker classified). Returns the manifest.

    Raises :class:`ServingError` if the export does not reproduce torch; an int8 model that
    fails its check is kept out (the manifest says why) and fp32 serves."""
    if len(images) == 0:
        raise ServingError("no images to check the ONNX export on")
    started = time.monotonic()
    images = images[:SAMPLE_IMAGES]
    labels = None if labels is None else list(labels)[:SAMPLE_IMAGES]
    final = serving_dir(version_dir)
    version_dir.mkdir(parents=True, exist_ok=True)
    tmp = version_dir / f".tmp-serving-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        fp32_path = tmp / FP32_FILE
        fp32_path.write_bytes(export_bytes(loaded))
        fp32_session = open_session(fp32_path, threads)
        fp32_logits = run_session(fp32_session, images)
        probe = slice(0, EXPORT_CHECK_IMAGES)
        diff = export_difference(fp32_logits[probe], torch_logits(loaded, images[probe]))
        limits = Int8Limits(min_agreement, margin, max_confidence_diff)
        int8, check, reason = _add_int8(tmp, fp32_logits, images, labels, limits, threads, loaded)
        manifest = ServingManifest(
            weights_sha256=weights_sha256,
            built_from=built_from,
            fp32=Artifact(FP32_FILE, sha256_file(fp32_path), diff),
            int8=int8,
            int8_check=check,
            int8_reason=reason,
            build_seconds=round(time.monotonic() - started, 2),
            onnxruntime=_ort_version(),
        )
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2))
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():  # another worker built it meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return load_manifest(version_dir) or manifest
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _add_int8(
    tmp: Path,
    fp32_logits: np.ndarray,
    images: np.ndarray,
    labels: Sequence[int] | None,
    limits: Int8Limits,
    threads: int,
    loaded: LoadedModel,
) -> tuple[Artifact | None, Int8Check | None, str | None]:
    """The int8 artifact (written to ``tmp``) if it passes its check, the check, and why
    there is no int8 artifact when there is none."""
    # Calibrate on every other image, check on the rest: agreement measured on images the
    # ranges were not fitted to.
    calibrate_on, check_on = np.arange(0, len(images), 2), np.arange(1, len(images), 2)
    if len(check_on) < MIN_CHECK_IMAGES:
        return (
            None,
            None,
            (
                f"int8 not built: only {len(check_on)} image(s) to check it against fp32 "
                f"(needs {MIN_CHECK_IMAGES})"
            ),
        )
    int8_bytes = quantize_bytes(tmp / FP32_FILE, images[calibrate_on], tmp)
    int8_logits = run_session(open_session(int8_bytes, threads), images[check_on])
    check = check_int8(
        fp32_logits[check_on],
        int8_logits,
        None if labels is None else [labels[int(i)] for i in check_on],
        min_agreement=limits.min_agreement,
        margin=limits.margin,
        temperature=loaded.calibration.temperature,
        max_confidence_diff=limits.max_confidence_diff,
    )
    if not check.passed:
        return None, check, f"int8 refused: {check.reason}"
    (tmp / INT8_FILE).write_bytes(int8_bytes)
    return Artifact(INT8_FILE, hashlib.sha256(int8_bytes).hexdigest()), check, None


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def load_manifest(version_dir: Path) -> ServingManifest | None:
    """The version's manifest, None if it has no artifacts; :class:`ArtifactRefused` if it is
    unreadable, of another format, or a file it names is missing or differs from its hash."""
    folder = serving_dir(version_dir)
    path = folder / MANIFEST_FILE
    if not folder.exists():
        return None
    try:
        manifest = ServingManifest.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactRefused(f"{path}: unreadable manifest ({exc})") from exc
    for entry in (manifest.fp32, manifest.int8):
        if entry is None:
            continue
        file = folder / entry.file
        if not file.is_file():
            raise ArtifactRefused(f"{file} is missing (named in {path})")
        if sha256_file(file) != entry.sha256:
            raise ArtifactRefused(f"{file} differs from the sha256 in {path}: tampered or damaged")
    return manifest


class OrtRunner:
    """Logits from an ONNX model: one session, run by every inference stream at once (a session's
    run() is thread-safe), each call on ``threads`` intra-op threads, the layout rule's threads
    per stream. Measured against a session per stream: as fast at batch 16 and up to 1.2x faster
    at batch 1, with one copy of the weights (docs/architecture.md, "ONNX Runtime and int8")."""

    def __init__(self, model: Path | bytes, precision: str, threads: int) -> None:
        self.path = model if isinstance(model, Path) else None  # None: exported in memory
        self.precision = precision
        self._session = open_session(model, threads)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(None, {"images": np.ascontiguousarray(batch)})[0]
        return out
