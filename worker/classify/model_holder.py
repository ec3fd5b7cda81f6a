"""Which model a worker classifies with: loaded lazily in the process that runs inference, and
swapped for a newly promoted version between batches, without a restart."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from db.engine import transaction
from db.models import ModelVersion
from db.versions import active_model, base_version_id, ensure_base_model, ensure_null_model
from worker.model import model_store, modelzoo, null_backend, onnx_backend
from worker.model.classifier import Classifier
from worker.model.precision import pick_autocast, pick_device
from worker.model.precision_probe import cpu_precision
from worker.model.serving import Serving

log = logging.getLogger(__name__)

# A version that failed to load (tampered, missing or mismatched file) is tried again at most
# this often, not at every model check: each try reads the file and logs a traceback.
REFUSED_RETRY_S = 60.0


def register_base_model(
    settings: Settings, sessions: sessionmaker[Session], classes: list[str] | None = None
) -> ModelVersion:
    """Register the configured base model (active where no trained model is), as a classify
    worker starts: ``status`` and ``models`` name it from the first second, before any image
    (and before the model itself is loaded, on the first batch). Returns the active model."""
    null = settings.inference_backend == "null"
    if classes is None:
        classes = (
            null_backend.NULL_CLASSES
            if null
            else modelzoo.base_classes(settings.model, settings.weights)
        )
    for attempt in range(2):
        try:
            with transaction(sessions) as session:
                if null:  # raises RealModelsHere on a data dir with real versions
                    active = ensure_null_model(session, null_backend.NULL_ARCH, classes)
                else:
                    active = ensure_base_model(session, settings.model, settings.weights, classes)
                session.expunge(active)
                return active
        except IntegrityError:
            # Another worker registered the same base at the same moment: read theirs.
            if attempt:
                raise
    raise AssertionError("unreachable")


class ModelHolder:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._lock = threading.Lock()
        self._current: Classifier | None = None
        self._checked_at = 0.0
        self._refused: dict[int, float] = {}  # version id -> when it last failed to load
        self._serving = Serving(settings, sessions)

    def current(self) -> Classifier:
        """The active model, checking the ledger for a new one at most every few seconds.
        A version that fails to load leaves the worker on the one it has."""
        with self._lock:
            now = time.monotonic()
            if self._current is None:
                self._current = self._first_load()
                self._checked_at = now
            elif (
                now - self._checked_at >= self._settings.model_check_interval_s
                and self._settings.inference_backend != "null"
            ):
                self._checked_at = now
                self._maybe_swap()
            return self._current

    def _first_load(self) -> Classifier:
        s = self._settings
        if s.inference_backend == "null":
            return self._null()
        base = modelzoo.build(s.model, s.weights)
        version_id, trained = self._register_base(base.classes)
        if not trained:
            log.info(
                "classifying with base model %s:%s (version %d)", s.model, s.weights, version_id
            )
            return self._wrap(version_id, base, trained=False, weights=s.weights)
        try:
            return self._wrap(
                version_id, self._load_trained(version_id), trained=True, weights=s.weights
            )
        except Exception:
            log.exception(
                "active model version %d failed to load; using the base model", version_id
            )
            # Record results under the base model's own version: _register_base returns the
            # *active* version (the trained one that was just refused), and results tagged
            # with it would claim a model that never produced them.
            return self._wrap(self._base_version_id(), base, trained=False, weights=s.weights)

    def _null(self) -> Classifier:
        """The no-model backend (worker.model.null_backend): never swapped for another version."""
        version_id, _ = self._register_base(null_backend.NULL_CLASSES)
        classifier = Classifier(version_id, null_backend.null_loaded(), torch.device("cpu"), None)
        classifier.use_runner(null_backend.NullRunner())
        log.info("classifying with no model (INFERENCE_BACKEND=null, version %d)", version_id)
        return classifier

    def _base_version_id(self) -> int:
        """The id of the configured base model's row (registered by _register_base)."""
        s = self._settings
        with transaction(self._sessions) as session:
            return base_version_id(session, s.model, s.weights)

    def _register_base(self, classes: list[str]) -> tuple[int, bool]:
        """Register the configured base model; returns the active version (id, trained)."""
        active = register_base_model(self._settings, self._sessions, classes)
        return active.id, active.trained

    def _maybe_swap(self) -> None:
        assert self._current is not None
        with transaction(self._sessions) as session:
            active = active_model(session)
            if active is None or active.id == self._current.version_id:
                return
        failed_at = self._refused.get(active.id)
        if failed_at is not None and time.monotonic() - failed_at < REFUSED_RETRY_S:
            return
        try:
            loaded = self._load_row(active)
        except Exception:
            self._refused[active.id] = time.monotonic()
            log.exception(
                "model version %d failed to load; staying on %d (next try in %.0fs)",
                active.id,
                self._current.version_id,
                REFUSED_RETRY_S,
            )
            return
        self._refused.pop(active.id, None)
        log.info("switching from model version %d to %d", self._current.version_id, active.id)
        old = self._current
        self._current = self._wrap(
            active.id, loaded, trained=active.trained, weights=active.weights
        )
        del old
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load_row(self, row: ModelVersion) -> modelzoo.LoadedModel:
        if row.trained:
            return self._load_trained(row.id)
        return modelzoo.build(row.arch, row.weights)

    def _load_trained(self, version_id: int) -> modelzoo.LoadedModel:
        return model_store.load_version(self._settings.models_path, version_id)

    def _wrap(
        self, version_id: int, loaded: modelzoo.LoadedModel, *, trained: bool, weights: str
    ) -> Classifier:
        device = pick_device(self._settings.device)
        autocast = pick_autocast(device, self._settings.precision)
        note = None
        if device.type == "cpu" and self._settings.precision == "auto" and autocast is not None:
            # The CPU offers bf16: measured against fp32 on this machine (once, then cached).
            probe = cpu_precision(
                loaded.model, loaded.arch, loaded.preprocessing.crop, self._settings.data_dir
            )
            autocast = torch.bfloat16 if probe.chosen == "bf16" else None
            note = f"precision probe: {probe.summary()}"
        classifier = Classifier(version_id, loaded, device, autocast)
        classifier.precision_note = note
        folder = model_store.version_dir(self._settings.models_path, version_id)
        self._serving.attach(
            classifier, folder, self._weights_identity(folder, trained, loaded.arch, weights)
        )
        return classifier

    @staticmethod
    def _weights_identity(folder: Path, trained: bool, arch: str, weights: str) -> str:
        """What the version's ONNX artifacts must have been built from."""
        if trained:
            return onnx_backend.sha256_file(folder / model_store.MODEL_FILE)
        identity = f"base:{arch}:{weights}"
        if weights not in ("imagenet", "none"):
            identity += ":" + onnx_backend.sha256_file(Path(weights))
        return identity
