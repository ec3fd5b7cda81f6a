"""Which backend serves a classifier (``INFERENCE_BACKEND``): torch, or ONNX Runtime at int8 or
fp32 from the version's artifacts (``worker.model.onnx_backend``).

``auto`` on a CPU: int8 where the version's int8 model passed its agreement check; else ONNX
Runtime fp32, except on a CPU that runs bf16 natively, where torch's bf16 measured faster than
ONNX Runtime fp32 (docs/architecture.md, "ONNX Runtime and int8"); torch on CUDA. A version
with no artifacts yet (a base model, or one trained before this backend existed) is served by an
fp32 export made in memory as it loads (torch until that is ready) while the worker keeps a
sample of the first images it classifies, then builds them in the background from that sample
and switches between two batches. Artifacts that fail their hash check are refused, logged
once, and torch serves that version.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from contract.serving import ServingManifest, ServingRecord
from contract.settings import Settings
from db import versions
from db.engine import transaction
from worker.model import onnx_backend
from worker.model.classifier import Classifier, CompileState
from worker.model.layout import inference_layout
from worker.model.precision import native_bf16

log = logging.getLogger(__name__)

#: A version with no artifacts is built from a sample of its first images: at this many, or at
#: BUILD_MIN_IMAGES once BUILD_AFTER_S passed since the first (a quiet inbox still gets one).
BUILD_MIN_IMAGES = 2 * onnx_backend.MIN_CHECK_IMAGES
BUILD_AFTER_S = 60.0
#: Another worker's build lock older than this is taken to be from a worker that died.
STALE_LOCK_S = 900.0
LOCK_FILE = ".serving-build.lock"


def torch_reason(settings: Settings, device_type: str) -> str | None:
    """Why torch serves (not ONNX Runtime) under these settings on this device, or None."""
    backend = settings.inference_backend
    if backend == "torch":
        return "INFERENCE_BACKEND=torch"
    if device_type != "cpu":
        if backend == "auto":
            return f"torch serves on {device_type}"
        return f"INFERENCE_BACKEND={backend} runs on a CPU only; torch serves on {device_type}"
    return onnx_backend.unavailable()


class Sampler:
    """Copies of the first images a classifier sees, handed to ``ready`` once (from the thread
    that completed the sample)."""

    def __init__(self, ready: Callable[[np.ndarray], None], size: int) -> None:
        self._ready = ready
        self._size = size
        self._lock = threading.Lock()
        self._arrays: list[np.ndarray] = []
        self._count = 0
        self._first_at: float | None = None
        self._done = False

    def offer(self, batch: np.ndarray) -> None:
        with self._lock:
            if self._done:
                return
            now = time.monotonic()
            self._first_at = self._first_at or now
            room = self._size - self._count
            if room > 0:
                self._arrays.append(batch[:room].copy())
                self._count += min(room, len(batch))
            full = self._count >= self._size
            waited = self._count >= BUILD_MIN_IMAGES and now - self._first_at >= BUILD_AFTER_S
            if not (full or waited):
                return
            self._done = True
            sample = np.concatenate(self._arrays)
            self._arrays = []
        self._ready(sample)


class Serving:
    """Attaches the right backend to each classifier a worker loads."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._threads = inference_layout(
            settings.inference_streams, settings.torch_threads, "cpu"
        ).threads_per_stream
        self._refused: set[int] = set()  # versions whose artifacts were refused (logged once)
        # Classifiers served from their built artifacts (or given up on): an interim runner
        # finishing late must not replace what they serve.
        self._lock = threading.Lock()
        self._settled: set[int] = set()  # id() of each: a classifier is a dataclass, unhashable

    def attach(self, classifier: Classifier, version_dir: Path, weights_sha256: str) -> None:
        """Serve ``classifier`` with ONNX Runtime where the settings and its artifacts allow;
        start building the artifacts if it has none. Never raises: torch is the fallback."""
        reason = torch_reason(self._settings, classifier.device.type)
        if reason is not None:
            self._announce(classifier, reason)
            return
        try:
            manifest = onnx_backend.load_manifest(version_dir)
            if manifest is not None and manifest.weights_sha256 != weights_sha256:
                raise onnx_backend.ArtifactRefused(
                    f"{onnx_backend.serving_dir(version_dir)} was built for other weights"
                )
        except onnx_backend.ArtifactRefused as exc:
            self._refuse(classifier, exc)
            return
        if manifest is None:
            self._build_later(classifier, version_dir, weights_sha256)
            return
        self._serve(classifier, version_dir, manifest)

    # --- serving from artifacts ----------------------------------------------------------------

    def _serve(self, classifier: Classifier, version_dir: Path, manifest: ServingManifest) -> None:
        backend = self._settings.inference_backend
        folder = onnx_backend.serving_dir(version_dir)
        entry, precision = manifest.preferred(backend)
        if precision == "fp32" and backend == "auto" and self._torch_is_faster(classifier):
            if classifier.compile_state is CompileState.OFF:  # set while it was to be replaced
                classifier.compile_state = CompileState.EAGER
            why = manifest.int8_reason or "int8 not allowed"
            self._announce(classifier, f"{why}; on this CPU torch bf16 beats ONNX Runtime fp32")
            return
        try:
            runner = onnx_backend.OrtRunner(folder / entry.file, precision, self._threads)
        except Exception as exc:
            self._refuse(classifier, exc)
            return
        with self._lock:
            self._settled.add(id(classifier))
            classifier.use_runner(runner)
        check = manifest.int8_check
        why = (
            f"top-1 agreement with fp32 {check.agreement:.3f} on {check.images} images"
            if precision == "int8" and check is not None
            else manifest.int8_reason or "INFERENCE_BACKEND=onnxruntime-fp32"
        )
        self._announce(classifier, why)

    def _announce(self, classifier: Classifier, why: str) -> None:
        """Say which backend serves, in the log and in the version's record."""
        if classifier.precision_note and classifier.runner is None:
            why = f"{why}; {classifier.precision_note}"
        log.info(
            "version %d classifies with %s (%s)", classifier.version_id, classifier.backend, why
        )
        self._record_serves(classifier, why)

    def _record_serves(self, classifier: Classifier, why: str) -> None:
        try:
            with transaction(self._sessions) as session:
                versions.set_serving(
                    session,
                    classifier.version_id,
                    ServingRecord(serves=classifier.backend, why=why),
                )
        except Exception as exc:  # the record is informative; serving goes on without it
            log.warning("could not record how version %d is served: %s", classifier.version_id, exc)

    def _torch_is_faster(self, classifier: Classifier) -> bool:
        """Torch in bf16 beats ONNX Runtime fp32 where bf16 was chosen: by the precision probe
        (it measured bf16 faster than fp32 on this CPU), or by PRECISION=bf16."""
        return classifier.autocast == torch.bfloat16 and native_bf16(classifier.device)

    def _refuse(self, classifier: Classifier, exc: Exception) -> None:
        if classifier.version_id in self._refused:
            return
        self._refused.add(classifier.version_id)
        log.error(
            "version %d: ONNX artifacts refused (%s); it classifies with %s",
            classifier.version_id,
            exc,
            classifier.backend,
        )
        self._record_serves(classifier, f"ONNX artifacts refused: {exc}")

    # --- building missing artifacts ------------------------------------------------------------

    def _build_later(self, classifier: Classifier, version_dir: Path, weights_sha256: str) -> None:
        # The interim torch model would only compile to be replaced: keep it eager.
        classifier.compile_state = CompileState.OFF
        self._announce(
            classifier,
            "until its ONNX artifacts are built from the first images it classifies",
        )

        def ready(sample: np.ndarray) -> None:
            classifier.sampler = None
            threading.Thread(
                target=self._build,
                args=(classifier, version_dir, weights_sha256, sample),
                name=f"serving-build-{classifier.version_id}",
                daemon=True,
            ).start()

        classifier.sampler = Sampler(ready, onnx_backend.SAMPLE_IMAGES)
        if not (self._settings.inference_backend == "auto" and self._torch_is_faster(classifier)):
            threading.Thread(
                target=self._serve_interim,
                args=(classifier,),
                name=f"serving-interim-{classifier.version_id}",
                # Joined at exit (≈ 2 s at most): a process ending under a running export
                # aborted in ONNX Runtime's threads ("terminate called ...").
                daemon=False,
            ).start()

    def _serve_interim(self, classifier: Classifier) -> None:
        """ONNX Runtime fp32 from an export made now, until the artifacts are built: torch
        eager was the slowest way to classify a fresh ``up``'s first images (a lone image on
        one thread, resnet18 at 224 px: 55 ms against 34; docs/performance.md)."""
        try:
            runner = onnx_backend.interim_runner(classifier.loaded, self._threads)
        except Exception as exc:
            log.warning(
                "version %d: no interim ONNX Runtime model (%s: %s); torch serves until the "
                "artifacts are built",
                classifier.version_id,
                type(exc).__name__,
                exc,
            )
            return
        with self._lock:  # held while announcing, so that a late one never says the final
            if id(classifier) in self._settled:
                return
            classifier.use_runner(runner)
            self._announce(
                classifier,
                "exported at start, until its artifacts are built from the first images it "
                "classifies",
            )

    def _build(
        self, classifier: Classifier, version_dir: Path, weights_sha256: str, sample: np.ndarray
    ) -> None:
        vid = classifier.version_id
        lock = version_dir / LOCK_FILE
        try:
            if not _take_lock(lock):
                manifest = self._wait_for_other(version_dir)
            else:
                try:
                    manifest = onnx_backend.build(
                        classifier.loaded,
                        version_dir,
                        sample,
                        None,
                        weights_sha256=weights_sha256,
                        built_from=f"the first {len(sample)} images this version classified",
                        min_agreement=self._settings.int8_min_agreement,
                        margin=self._settings.gate_margin,
                        threads=self._threads,
                    )
                finally:
                    lock.unlink(missing_ok=True)
                self._record(vid, manifest)
        except Exception as exc:
            log.warning(
                "version %d: could not build ONNX artifacts (%s: %s); it classifies with %s",
                vid,
                type(exc).__name__,
                exc,
                classifier.backend,
            )
            with self._lock:
                self._settled.add(id(classifier))
                # torch for good (compiling may pay), unless the interim export serves
                if classifier.runner is None:
                    classifier.compile_state = CompileState.EAGER
            return
        if manifest is not None:
            self._serve(classifier, version_dir, manifest)

    def _wait_for_other(self, version_dir: Path) -> ServingManifest | None:
        deadline = time.monotonic() + STALE_LOCK_S
        while time.monotonic() < deadline:
            manifest = onnx_backend.load_manifest(version_dir)
            if manifest is not None:
                return manifest
            time.sleep(2.0)
        raise onnx_backend.ServingError("another worker's build did not finish")

    def _record(self, version_id: int, manifest: ServingManifest) -> None:
        record = ServingRecord.of(manifest, self._settings.inference_backend)
        with transaction(self._sessions) as session:
            versions.set_serving(session, version_id, record)


def _take_lock(lock: Path) -> bool:
    """Create ``lock`` exclusively (one builder per version across workers); a lock left by a
    worker that died is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime < STALE_LOCK_S:
                    return False
                lock.unlink()
            except FileNotFoundError:
                pass
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return True
    return False
