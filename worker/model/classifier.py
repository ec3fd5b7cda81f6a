"""A loaded model on its device: uint8 image batch in, top-k labels out.

A classifier starts eager. Where compiling pays (``TORCH_COMPILE``, see :func:`compile_blocker`),
:meth:`Classifier.compile_async` builds a ``torch.compile``d version (Inductor, frozen weights,
dynamic batch dimension) on a background thread, warms it up for the batch sizes it will see,
and only then swaps it in between two batches: serving never waits for a compilation. It pays
on CPUs that run bf16 natively and not in fp32 on AVX2 (figures in docs/performance.md),
which is why ``auto`` compiles only where the CPU runs bf16 natively. Where compiling is
impossible (no C++ compiler for CPU, no Triton for CUDA) or fails, the classifier stays eager.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import torch

from contract.records import LabelScore
from worker.model.modelzoo import LoadedModel

log = logging.getLogger(__name__)


class CompileState(StrEnum):
    EAGER = "eager"  # not (yet) asked to compile
    OFF = "off"  # compiling does not pay or cannot work here: eager for good
    COMPILING = "compiling"  # on a background thread
    COMPILED = "compiled"  # serving the compiled model
    FAILED = "failed"  # compiling failed: eager for good


def compile_blocker(mode: str, device: torch.device, autocast: torch.dtype | None) -> str | None:
    """Why the model should not be compiled under ``mode`` ('auto' | 'on' | 'off') on
    ``device``, or None if it should."""
    if mode == "off":
        return "TORCH_COMPILE is off"
    if os.environ.get("TORCH_COMPILE_DISABLE", "") not in ("", "0"):
        return "TORCH_COMPILE_DISABLE is set"
    if device.type == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++")):
            return "no C++ compiler for torch.compile (install g++)"
        if mode == "auto" and autocast != torch.bfloat16:
            return (
                "TORCH_COMPILE=auto compiles only on CPUs that run bf16 natively; in fp32 it "
                "measured no faster (set TORCH_COMPILE=on to compile anyway)"
            )
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
        if mode == "auto":
            return "TORCH_COMPILE=auto does not compile on CUDA yet (not measured; set it to on)"
    else:
        return f"no torch.compile support wired up for {device.type}"
    return None


class Runner(Protocol):
    """Another backend's logits for the same uint8 NHWC batches (worker.model.onnx_backend)."""

    precision: str

    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class Sampling(Protocol):
    def offer(self, batch: np.ndarray) -> None: ...


@dataclass
class Classifier:
    version_id: int
    loaded: LoadedModel
    device: torch.device
    autocast: torch.dtype | None

    def __post_init__(self) -> None:
        prep = self.loaded.preprocessing
        self.model = self.loaded.model.eval().to(self.device).to(memory_format=torch.channels_last)
        self._mean = torch.tensor(prep.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(prep.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._compile_lock = threading.Lock()
        self.compile_state = CompileState.EAGER
        self.served = 0  # images classified with this instance (callers may count here)
        # Set by worker.model.serving: an ONNX Runtime runner replaces torch from the next batch;
        # a sampler sees the first batches, to build that runner from.
        self.runner: Runner | None = None
        self.sampler: Sampling | None = None
        # How its precision was chosen (worker.model.precision_probe), for the log and the record.
        self.precision_note: str | None = None

    @property
    def backend(self) -> str:
        """What computes the logits, e.g. 'onnxruntime int8' or 'torch bf16'."""
        if self.runner is not None:
            return f"onnxruntime {self.runner.precision}"
        names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        precision = names.get(self.autocast, "fp32") if self.autocast else "fp32"
        compiled = ", compiled" if self.compile_state is CompileState.COMPILED else ""
        return f"torch {precision}{compiled}"

    def use_runner(self, runner: Runner) -> None:
        """Serve with ``runner`` from the next batch on; torch.compile is not needed any more."""
        with self._compile_lock:
            if self.compile_state is CompileState.EAGER:
                self.compile_state = CompileState.OFF
        self.runner = runner

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch``: uint8 NHWC on any device. Returns fp32 logits."""
        compiled = self._compiled
        return self._logits(self.model if compiled is None else compiled, batch)

    def _logits(self, model: Callable[..., torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # channels_last view
        x = x.float().sub_(self._mean).div_(self._std)
        # cache_enabled=False: the weight-cast cache only serves training (leaf tensors that
        # require grad), and its global mutex, taken while a background torch.compile traces
        # under autocast, deadlocked against this thread's autocast exit.
        context: Any = (
            torch.autocast(self.device.type, dtype=self.autocast, cache_enabled=False)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with context:
            return model(x.contiguous(memory_format=torch.channels_last)).float()

    # --- compilation ---------------------------------------------------------------------------

    def compile_async(self, batch_sizes: Sequence[int], mode: str = "on") -> bool:
        """Compile on a background thread, warmed up for ``batch_sizes`` (the largest batch and
        1: with a dynamic batch dimension every size in between uses the same code), then swap
        it in. Returns False if a compilation was already started, or if ``mode`` and this
        machine say not to compile (logged once; the classifier then stays eager for good)."""
        with self._compile_lock:
            if self.compile_state is not CompileState.EAGER:
                return False
            reason = compile_blocker(mode, self.device, self.autocast)
            if reason:
                log.info("classifying eagerly: %s", reason)
                self.compile_state = CompileState.OFF
                return False
            self.compile_state = CompileState.COMPILING
        thread = threading.Thread(
            target=self._compile, args=(list(batch_sizes),), name="compile", daemon=True
        )
        thread.start()
        return True

    def wait_compiled(self, timeout: float) -> bool:
        """For benchmarks and tests: wait until a started compilation is done."""
        deadline = time.monotonic() + timeout
        while self.compile_state is CompileState.COMPILING and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.compile_state is CompileState.COMPILED

    def _compile(self, batch_sizes: list[int]) -> None:
        started = time.monotonic()
        try:
            compiled = torch.compile(self.model, dynamic=True, options={"freezing": True})
            crop = self.loaded.preprocessing.crop
            # Sizes in decreasing order: the dynamic graph first, then size 1 (specialised).
            with torch.inference_mode():
                for size in sorted(set(batch_sizes), reverse=True):
                    dummy = torch.zeros((size, crop, crop, 3), dtype=torch.uint8)
                    self._logits(compiled, dummy)
        except Exception as exc:
            log.warning(
                "torch.compile failed (%s: %s); classifying eagerly",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            self.compile_state = CompileState.FAILED
            return
        self._compiled = compiled
        self.compile_state = CompileState.COMPILED
        log.info(
            "model compiled for batch sizes %s in %.1fs; using it from the next batch",
            sorted(set(batch_sizes)),
            time.monotonic() - started,
        )

    def _runner_logits(self, runner: Runner, batch: np.ndarray) -> torch.Tensor | None:
        """The runner's logits; if it fails, torch takes over for good (logged once)."""
        try:
            return torch.from_numpy(runner.logits(batch))
        except Exception:
            log.exception(
                "version %d: %s failed on a batch; classifying with torch from now on",
                self.version_id,
                self.backend,
            )
            self.runner = None
            return None

    def predict(self, batch: np.ndarray | torch.Tensor, topk: int) -> list[list[LabelScore]]:
        """Top-k ``{label, confidence}`` per image, best first (calibrated)."""
        return [scored.topk for scored in self.score(batch, topk)]

    def score(self, batch: np.ndarray | torch.Tensor, topk: int) -> list[Scored]:
        """Per image: the top-k ``{label, confidence}`` (calibrated: the logits are divided by
        the version's temperature), best first, and what the calibration says of it.
        ``batch``: uint8 NHWC, a host array or a tensor on any device (batched decode)."""
        calibration = self.loaded.calibration
        sampler, runner = self.sampler, self.runner
        images = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
        if sampler is not None and images.device.type == "cpu":
            sampler.offer(images.numpy())  # the same memory, no copy
        with torch.inference_mode():
            # A runner computes on the host (.cpu() copies only a device batch back: a CPU
            # runner on a GPU worker is not a layout auto picks).
            logits = (
                self._runner_logits(runner, images.cpu().numpy()) if runner is not None else None
            )
            if logits is None:
                logits = self.logits(images)
            if calibration.temperature != 1.0:
                logits = logits / calibration.temperature
            probs = logits.softmax(dim=1)
            k = min(topk, probs.shape[1])
            conf, idx = probs.topk(k, dim=1)
            set_sizes = (
                (probs >= calibration.set_threshold).sum(dim=1).cpu().tolist()
                if calibration.set_threshold is not None
                else None
            )
        conf_list, idx_list = (t.tolist() for t in _to_host(conf, idx))
        out = []
        for n, (cs, ix) in enumerate(zip(conf_list, idx_list, strict=True)):
            top = [
                LabelScore(label=self.classes[i], confidence=round(c, 6))
                for c, i in zip(cs, ix, strict=True)
            ]
            needed = calibration.class_thresholds.get(top[0]["label"])
            out.append(
                Scored(
                    topk=top,
                    needs_review=None if set_sizes is None else set_sizes[n] != 1,
                    sure=None if needed is None else cs[0] >= needed,
                )
            )
        return out


def _to_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Copy results back; from a GPU asynchronously on this thread's stream, then wait for that
    stream only (not the device, which the other inference stream keeps busy)."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.cpu() for t in tensors]
    copies = [t.to("cpu", non_blocking=True) for t in tensors]
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return copies


@dataclass(frozen=True, slots=True)
class Scored:
    """One image's prediction."""

    topk: list[LabelScore]
    # The conformal prediction set holds more than one class, or none: a person should look.
    # None when the version has no calibration to say so.
    needs_review: bool | None = None
    # At or above its class's target-precision threshold; None where the class has none.
    sure: bool | None = None
