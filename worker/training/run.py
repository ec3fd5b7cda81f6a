"""One training run, start to finish: lock, skip-if-unchanged, scan, train, evaluate, gate,
save, promote. Called by the Celery task (:mod:`worker.training.task`) and by
``inbox-classifier retrain --wait`` in-process.

The ledger records everything: a ``training_runs`` row (running -> promoted / rejected /
skipped / failed, with per-epoch progress and a message) and, for a trained model, a
``model_versions`` row (candidate -> active / rejected) created before its files are written.
Model files are written atomically by :func:`worker.model_store.save_version`, so a killed run
leaves nothing half-written; the next run marks the dead run failed and starts clean.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import activate, active_model
from db.models import ModelStatus, ModelVersion, RunStatus, TrainingRun, utcnow
from inbox_classifier.settings import Settings
from worker import model_store, modelzoo
from worker.classifier import pick_device
from worker.training.batches import EvalSet, ImageSource, Normalizer
from worker.training.dataset import (
    VAL_DIR,
    LabeledSet,
    TrainingRefused,
    list_labeled,
    manifest_sha256,
    scan_labeled,
)
from worker.training.features import FeatureSet, extract, get_head, headless, remap_head
from worker.training.gate import GateVerdict, accuracy_on, decide
from worker.training.lock import LOCK_TIMEOUT_S, TrainingLock
from worker.training.loop import EvalResult, FitResult, TrainConfig, autocast_context, evaluate, fit
from worker.training.report import GRID_MAX, curves_png, report_json, val_grid_png

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

QUEUED = "queued"  # progress phase of a run row created by the CLI, waiting for a worker
QUEUED_STALE = timedelta(days=1)  # a queued run never picked up in this long: message lost
PROGRESS_WRITE_INTERVAL_S = 1.0


@dataclass
class RunOutcome:
    run_id: int | None
    status: str
    message: str
    version_id: int | None = None
    version_name: str | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("report")
        return data


@dataclass(frozen=True)
class ActiveInfo:
    id: int
    name: str
    arch: str
    classes: list[str]
    trained: bool
    manifest_sha256: str | None

    @classmethod
    def of(cls, row: ModelVersion) -> ActiveInfo:
        return cls(
            row.id,
            row.name,
            row.arch,
            [str(c) for c in row.classes],
            row.trained,
            row.manifest_sha256,
        )


def pick_autocast(device: torch.device, spec: str = "auto") -> torch.dtype | None:
    """bf16 autocast for training where the hardware runs it natively: CUDA with bf16, or a
    CPU with AVX512-BF16/AMX. 'fp32' turns it off, 'bf16' forces it."""
    if spec == "fp32":
        return None
    if spec == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpu = torch.cpu
    return torch.bfloat16 if cpu._is_avx512_bf16_supported() else None


def create_queued_run(sessions: sessionmaker[Session], trigger: str = "manual") -> int:
    """A run row for a request that a worker will pick up (``retrain`` without ``--wait``)."""
    with transaction(sessions) as session:
        run = TrainingRun(
            status=RunStatus.RUNNING.value,
            trigger=trigger,
            message="waiting for a training worker",
            progress={"phase": QUEUED},
        )
        session.add(run)
        session.flush()
        return run.id


def run_training(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    trigger: str = "manual",
    force: bool = False,
    run_id: int | None = None,
    fresh: bool = False,
    autocast: str | None = None,
    on_progress: Progress | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    config: TrainConfig | None = None,
) -> RunOutcome:
    """Run one training. Never raises for bad data or a failed run: the outcome (and the
    ledger) says what happened. ``fresh`` starts from the configured base model even when the
    active model could be fine-tuned. ``autocast``: 'auto' (default: 'fp32' when
    settings.precision is 'fp32'), 'bf16' or 'fp32'."""
    engine = None
    if sessions is None:
        engine = make_engine(settings.db_url)
        sessions = make_sessionmaker(engine)
    try:
        return _Run(
            settings,
            sessions,
            trigger=trigger,
            force=force,
            run_id=run_id,
            fresh=fresh,
            autocast=autocast or ("fp32" if settings.precision == "fp32" else "auto"),
            on_progress=on_progress,
            lock_timeout_s=lock_timeout_s,
            config=config or TrainConfig.from_settings(settings),
        ).execute()
    finally:
        if engine is not None:
            engine.dispose()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _has_class_dirs(root: Path) -> bool:
    try:
        return any(
            p.is_dir() and not p.name.startswith(".") and p.name != VAL_DIR for p in root.iterdir()
        )
    except OSError:
        return False


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Run:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        trigger: str,
        force: bool,
        run_id: int | None,
        fresh: bool,
        autocast: str,
        on_progress: Progress | None,
        lock_timeout_s: float,
        config: TrainConfig,
    ) -> None:
        self.s = settings
        self.sessions = sessions
        self.trigger = trigger
        self.force = force
        self.run_id = run_id
        self.fresh = fresh
        self.autocast_spec = autocast
        self.on_progress = on_progress
        self.lock_timeout_s = lock_timeout_s
        self.cfg = config
        self.progress: dict[str, Any] = {}
        self._progress_lock = threading.Lock()
        self._written_at = 0.0
        self._lock: TrainingLock | None = None
        self.started = time.perf_counter()

    # --- ledger bookkeeping ------------------------------------------------------------------

    def _emit(self, event: str, write: bool = True, **values: Any) -> None:
        """Update the progress, tell the caller, and write it to the run row (throttled for
        frequent events)."""
        with self._progress_lock:
            self.progress.update(values)
            self.progress["heartbeat"] = _iso(utcnow())
            snapshot = dict(self.progress)
            due = write or time.monotonic() - self._written_at >= PROGRESS_WRITE_INTERVAL_S
            if due:
                self._written_at = time.monotonic()
        if due and self.run_id is not None:
            with transaction(self.sessions) as session:
                run = session.get(TrainingRun, self.run_id)
                if run is not None:
                    run.progress = snapshot
        if self.on_progress is not None:
            self.on_progress({"event": event, **snapshot})

    def _warn(self, message: str) -> None:
        if self.on_progress is None:  # a caller with a progress callback shows it itself
            log.warning("%s", message)
        self._emit("warning", write=False, last_warning=message)

    def _heartbeat(self) -> None:
        self._emit("heartbeat")

    def _finish(
        self,
        status: RunStatus,
        message: str,
        version_id: int | None = None,
        version_name: str | None = None,
        report: dict[str, Any] | None = None,
    ) -> RunOutcome:
        with self._progress_lock:
            self.progress["phase"] = status.value
            self.progress["heartbeat"] = _iso(utcnow())
            snapshot = dict(self.progress)
        with transaction(self.sessions) as session:
            run = session.get(TrainingRun, self.run_id) if self.run_id is not None else None
            if run is None:
                run = TrainingRun(trigger=self.trigger)
                session.add(run)
            run.status = status.value
            run.message = message
            run.progress = snapshot
            run.finished_at = utcnow()
            if version_id is not None:
                run.model_version_id = version_id
            session.flush()
            self.run_id = run.id
        level = logging.WARNING if status == RunStatus.FAILED else logging.INFO
        log.log(level, "training run %s %s: %s", self.run_id, status.value, message)
        outcome = RunOutcome(self.run_id, status.value, message, version_id, version_name, report)
        if self.on_progress is not None:
            self.on_progress({"event": "finished", **snapshot, **outcome.to_dict()})
        return outcome

    def _claim(self) -> RunOutcome | None:
        """Take (or create) this run's row. A redelivered message for a finished run does
        nothing and returns that run's outcome."""
        with transaction(self.sessions) as session:
            run = session.get(TrainingRun, self.run_id) if self.run_id is not None else None
            if run is not None and run.status != RunStatus.RUNNING:
                return RunOutcome(run.id, run.status, run.message or "", run.model_version_id)
            if run is None:
                run = TrainingRun(trigger=self.trigger, status=RunStatus.RUNNING.value)
                session.add(run)
            else:
                if (run.progress or {}).get("phase") not in (None, QUEUED):
                    log.warning("run %d was interrupted; starting it again", run.id)
                run.started_at = utcnow()
            run.message = "training"
            run.progress = {"phase": "starting", "heartbeat": _iso(utcnow())}
            session.flush()
            self.run_id = run.id
        self.progress = {"phase": "starting"}
        return None

    def _busy_message(self) -> str:
        with transaction(self.sessions) as session:
            running = session.scalars(
                select(TrainingRun)
                .where(
                    TrainingRun.status == RunStatus.RUNNING, TrainingRun.id != (self.run_id or -1)
                )
                .order_by(TrainingRun.id.desc())
            ).all()
            live = [r.id for r in running if (r.progress or {}).get("phase") != QUEUED]
        which = f" (run {live[0]})" if live else ""
        return f"another training run is in progress{which}: not started twice"

    def _skip_busy(self) -> RunOutcome:
        """The lock is taken. A queued row of ours is marked skipped; a row that is RUNNING
        elsewhere (a redelivered message of a live run) is left alone."""
        message = self._busy_message()
        if self.run_id is not None:
            with transaction(self.sessions) as session:
                run = session.get(TrainingRun, self.run_id)
                if run is not None and (
                    run.status != RunStatus.RUNNING or (run.progress or {}).get("phase") != QUEUED
                ):
                    return RunOutcome(run.id, run.status, message, run.model_version_id)
        return self._finish(RunStatus.SKIPPED, message)

    def _reap_stale(self) -> int | None:
        """Holding the lock: other RUNNING rows are dead runs, unless one still stamps its
        heartbeat (Redis lost the lock under it), whose id is returned. Dead runs are marked
        failed and their unsaved candidate versions rejected.

        A live run stamps its row every lock_timeout/4. Holding the Redis lock, a row silent
        for half the timeout is dead (its lock expired a whole timeout after its last renewal);
        without Redis, a whole timeout of silence is required."""
        now = utcnow()
        in_redis = self._lock is not None and self._lock.in_redis
        stale_after = timedelta(
            seconds=self.lock_timeout_s / 2 if in_redis else self.lock_timeout_s
        )
        with transaction(self.sessions) as session:
            others = session.scalars(
                select(TrainingRun).where(
                    TrainingRun.status == RunStatus.RUNNING, TrainingRun.id != self.run_id
                )
            ).all()
            for run in others:
                progress = run.progress or {}
                if progress.get("phase") == QUEUED:
                    if now - _aware(run.started_at) > QUEUED_STALE:
                        run.status = RunStatus.FAILED.value
                        run.message = "never picked up by a training worker"
                        run.finished_at = now
                    continue
                try:
                    beat = datetime.fromisoformat(str(progress["heartbeat"]))
                except (KeyError, ValueError):
                    beat = _aware(run.started_at)
                if now - _aware(beat) < stale_after:
                    return run.id
                run.status = RunStatus.FAILED.value
                run.message = (
                    f"interrupted: no heartbeat since {_iso(_aware(beat))} (the process running "
                    "it died); nothing it wrote was promoted"
                )
                run.finished_at = now
                if run.model_version_id is not None:
                    version = session.get(ModelVersion, run.model_version_id)
                    if version is not None and version.status == ModelStatus.CANDIDATE:
                        version.status = ModelStatus.REJECTED.value
                        version.reason = f"run {run.id} was interrupted before it finished"
                log.warning("marked stale training run %d failed", run.id)
        return None

    # --- the run -------------------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        lock = TrainingLock(self.s.redis_url, self.lock_timeout_s)
        if not lock.acquire():
            return self._skip_busy()
        self._lock = lock
        try:
            done = self._claim()
            if done is not None:
                return done
            live = self._reap_stale()
            if live is not None:
                return self._finish(
                    RunStatus.SKIPPED, f"another training run is in progress (run {live})"
                )
            lock.start_heartbeat(self._heartbeat)
            return self._guarded()
        finally:
            lock.release()

    def _guarded(self) -> RunOutcome:
        try:
            with _torch_threads(self.s.torch_threads):
                return self._train()
        except TrainingRefused as exc:
            return self._finish(RunStatus.FAILED, f"refused: {exc}")
        except Exception as exc:
            log.exception("training run %s failed", self.run_id)
            return self._finish(RunStatus.FAILED, f"failed: {type(exc).__name__}: {exc}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _check_lock(self) -> None:
        if self._lock is not None and self._lock.lost:
            raise RuntimeError("lost the training lock to another run; stopping this one")

    def _active(self) -> ActiveInfo | None:
        with transaction(self.sessions) as session:
            row = active_model(session)
            return ActiveInfo.of(row) if row is not None else None

    def _unchanged(self, manifest: str, active: ActiveInfo | None) -> str | None:
        """Why this run need not train: the active model, or the newest trained version (one
        the gate rejected, or rolled back from), was trained on exactly this data. A version
        whose files were never written (a failed save) does not count."""
        if active is not None and active.trained and active.manifest_sha256 == manifest:
            return f"labeled data unchanged since {active.name} was trained"
        with transaction(self.sessions) as session:
            last = session.scalars(
                select(ModelVersion)
                .where(ModelVersion.trained.is_(True))
                .order_by(ModelVersion.id.desc())
                .limit(1)
            ).first()
            if (
                last is not None
                and last.manifest_sha256 == manifest
                and last.status != ModelStatus.CANDIDATE
                and Path(last.weights).is_file()
            ):
                return (
                    f"labeled data unchanged since {last.name} was trained on it "
                    f"(now {last.status})"
                )
        return None

    def _train(self) -> RunOutcome:
        s, cfg = self.s, self.cfg
        self._emit("phase", phase="scanning", labeled=str(s.labeled_path))
        if self.trigger == "schedule" and not _has_class_dirs(s.labeled_path):
            # Nobody labels anything here (yet): an hourly 'failed' would only be noise.
            return self._finish(RunStatus.SKIPPED, f"no labeled class folders in {s.labeled_path}")
        listing = list_labeled(s.labeled_path)
        manifest = manifest_sha256(listing)
        active = self._active()
        if not self.force:
            why = self._unchanged(manifest, active)
            if why is not None:
                return self._finish(RunStatus.SKIPPED, f"{why}; nothing to do (--force retrains)")

        labeled = scan_labeled(
            s.labeled_path,
            val_fraction=s.val_fraction,
            min_images_per_class=s.min_images_per_class,
            max_pixels=s.max_image_pixels,
            threads=s.decode_threads,
            listing=listing,
            warn=self._warn,
        )
        start, started_from = self._start_model(active, labeled.classes)
        prep = start.preprocessing
        kept_rows = remap_head(start.model, start.classes, labeled.classes)
        start.classes = list(labeled.classes)
        self._emit(
            "phase",
            phase="preparing",
            classes=labeled.classes,
            train_images=len(labeled.train),
            val_images=len(labeled.val),
            mode=cfg.mode,
        )

        device = pick_device(s.device)
        autocast = pick_autocast(device, self.autocast_spec)
        source = ImageSource(prep, s.max_image_pixels, s.decode_threads)
        model = start.model.to(device)
        timings: dict[str, float] = {}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            eval_set = EvalSet(source, labeled.val, cfg.batch_size)
            if cfg.mode == "frozen":
                fit_result, final = self._fit_frozen(
                    model, labeled, source, eval_set, device, autocast, timings
                )
            else:
                fit_result, final = self._fit_full(
                    model, labeled, source, eval_set, device, autocast, timings
                )
        self._check_lock()
        model = model.cpu().eval()
        start.model = model

        classes = labeled.classes
        per_class = dict(zip(classes, final.per_class(len(classes)), strict=True))
        truth_names = [classes[t] for t in final.targets]
        pred_names = [classes[p] for p in final.preds]
        verdict = self._gate(active, labeled, eval_set, truth_names, pred_names, device, autocast)
        timings["total"] = time.perf_counter() - self.started

        report = {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "arch": start.arch,
            "classes": classes,
            "accuracy": final.accuracy,
            "val_loss": final.loss,
            "per_class_accuracy": per_class,
            "confusion_matrix": {
                "rows": "true class",
                "columns": "predicted class",
                "classes": classes,
                "matrix": final.confusion(len(classes)),
            },
            "history": fit_result.history,
            "best_epoch": fit_result.best_epoch,
            "epochs_run": len(fit_result.history),
            "stopped_early": fit_result.stopped_early,
            "images_per_class": labeled.images_per_class(),
            "train_images": len(labeled.train),
            "val_images": len(final.targets),
            "val_split": "labeled/_val folder"
            if labeled.explicit_val
            else f"content hash (val_fraction {s.val_fraction:g})",
            "skipped_corrupt": len(labeled.corrupt) + len(source.failed),
            "corrupt_files": labeled.corrupt[:100]
            + [{"path": p, "error": e} for p, e in list(source.failed.items())[:100]],
            "warnings": labeled.warnings,
            "started_from": started_from,
            "head_rows_kept": kept_rows,
            "mode": cfg.mode,
            "config": asdict(cfg),
            "device": str(device),
            "autocast": str(autocast).replace("torch.", "") if autocast else "fp32",
            "preprocessing": prep.to_dict(),
            "duration_s": {k: round(v, 3) for k, v in timings.items()},
            "manifest_sha256": manifest,
            "gate": verdict.to_dict(),
            "created_at": _iso(utcnow()),
        }
        pairs = list(zip(final.targets, final.preds, strict=True))
        shown = sorted(range(len(pairs)), key=lambda i: (pairs[i][0] == pairs[i][1], i))[:GRID_MAX]
        grid = (
            eval_set.images(shown),
            [truth_names[i] for i in shown],
            [pred_names[i] for i in shown],
        )
        return self._save_and_decide(start, labeled, report, verdict, grid)

    def _start_model(
        self, active: ActiveInfo | None, classes: list[str]
    ) -> tuple[modelzoo.LoadedModel, str]:
        """The active model when it is trained, of the configured arch and knows exactly the
        labeled classes (fine-tuning); the configured base model otherwise."""
        s = self.s
        if (
            not self.fresh
            and active is not None
            and active.trained
            and active.arch == s.model
            and set(active.classes) == set(classes)
        ):
            try:
                loaded = model_store.load_version(s.models_path, active.id)
                return loaded, f"fine-tuned from {active.name}"
            except Exception as exc:
                log.warning(
                    "active model %s failed to load (%s): starting from the base", active.name, exc
                )
        loaded = modelzoo.build(s.model, s.weights)
        return loaded, f"base {s.model} (weights {s.weights})"

    def _epoch_callback(self) -> Callable[[dict[str, float]], None]:
        epochs = self.cfg.epochs

        def on_epoch(record: dict[str, float]) -> None:
            self._check_lock()
            self._emit(
                "epoch",
                write=record["epoch"] == epochs,
                phase="training",
                epochs=epochs,
                **record,
            )

        return on_epoch

    def _fit_full(
        self,
        model: torch.nn.Module,
        labeled: LabeledSet,
        source: ImageSource,
        eval_set: EvalSet,
        device: torch.device,
        autocast: torch.dtype | None,
        timings: dict[str, float],
    ) -> tuple[FitResult, EvalResult]:
        cfg = self.cfg
        model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(True)
        normalize = Normalizer(source.prep, device)
        generator = torch.Generator().manual_seed(cfg.seed)
        self._emit("phase", phase="training", epochs=cfg.epochs)
        t0 = time.perf_counter()
        result = fit(
            model,
            cfg,
            train_batches=lambda _epoch: source.batches(
                labeled.train, cfg.batch_size, source.train_image, generator, drop_single=True
            ),
            val_batches=lambda: eval_set,
            prepare_train=normalize,
            prepare_val=normalize,
            device=device,
            autocast=autocast,
            on_epoch=self._epoch_callback(),
        )
        timings["training"] = time.perf_counter() - t0
        final = evaluate(model, torch.nn.CrossEntropyLoss(), eval_set, normalize, device, autocast)
        return result, final

    def _fit_frozen(
        self,
        model: torch.nn.Module,
        labeled: LabeledSet,
        source: ImageSource,
        eval_set: EvalSet,
        device: torch.device,
        autocast: torch.dtype | None,
        timings: dict[str, float],
    ) -> tuple[FitResult, EvalResult]:
        cfg = self.cfg
        normalize = Normalizer(source.prep, device)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        passes = 1 + cfg.feature_passes
        self._emit("phase", phase="features", feature_passes=passes)
        t0 = time.perf_counter()
        with headless(model):
            val = FeatureSet(*extract(model, eval_set, normalize, autocast))
            sets = [
                FeatureSet(
                    *extract(
                        model,
                        source.batches(labeled.train, cfg.batch_size, source.eval_image),
                        normalize,
                        autocast,
                    )
                )
            ]
            for _ in range(cfg.feature_passes):
                batches = source.batches(labeled.train, cfg.batch_size, source.train_image)
                sets.append(FeatureSet(*extract(model, batches, normalize, autocast)))
                self._check_lock()
        timings["features"] = time.perf_counter() - t0
        head = get_head(model)
        for p in head.parameters():
            p.requires_grad_(True)
        generator = torch.Generator().manual_seed(cfg.seed)

        def to_device(features: torch.Tensor) -> torch.Tensor:
            return features.to(device, non_blocking=True)

        self._emit("phase", phase="training", epochs=cfg.epochs)
        t1 = time.perf_counter()
        result = fit(
            head,
            cfg,
            train_batches=lambda epoch: sets[(epoch - 1) % len(sets)].batches(
                cfg.batch_size, generator
            ),
            val_batches=lambda: val.batches(cfg.batch_size),
            prepare_train=to_device,
            prepare_val=to_device,
            device=device,
            autocast=None,  # a Linear on cached features: fp32 costs nothing
            on_epoch=self._epoch_callback(),
        )
        timings["training"] = time.perf_counter() - t1
        model.requires_grad_(True)
        final = evaluate(
            head, torch.nn.CrossEntropyLoss(), val.batches(cfg.batch_size), to_device, device
        )
        return result, final

    # --- the gate --------------------------------------------------------------------------------

    def _gate(
        self,
        active: ActiveInfo | None,
        labeled: LabeledSet,
        eval_set: EvalSet,
        truth: list[str],
        predicted: list[str],
        device: torch.device,
        autocast: torch.dtype | None,
    ) -> GateVerdict:
        margin = self.s.gate_margin
        if active is None or not active.trained:
            return decide(
                margin=margin,
                active_version_id=active.id if active else None,
                active_name=active.name if active else None,
                active_trained=False,
            )
        shared = [c for c in labeled.classes if c in set(active.classes)]
        self._emit("phase", phase="gate", compared_with=active.name)
        candidate_acc, images = accuracy_on(truth, predicted, set(shared))
        try:
            active_acc = self._score_active(
                active, labeled, eval_set, set(shared), device, autocast
            )
        except Exception as exc:
            log.exception("could not score the active model %s", active.name)
            return GateVerdict(
                True,
                f"the active model {active.name} could not be evaluated ({exc})",
                margin,
                active.id,
                active.name,
                tuple(shared),
                images,
                candidate_acc,
                None,
            )
        return decide(
            margin=margin,
            active_version_id=active.id,
            active_name=active.name,
            active_trained=True,
            shared_classes=shared,
            candidate_accuracy=candidate_acc if images else None,
            active_accuracy=active_acc,
            images=images,
        )

    def _score_active(
        self,
        active: ActiveInfo,
        labeled: LabeledSet,
        eval_set: EvalSet,
        shared: set[str],
        device: torch.device,
        autocast: torch.dtype | None,
    ) -> float | None:
        """The active model's accuracy on the validation images of the shared classes."""
        if not shared:
            return None
        loaded = model_store.load_version(self.s.models_path, active.id)
        model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
        labels = {i for i, c in enumerate(labeled.classes) if c in shared}
        if loaded.preprocessing == eval_set.source.prep:
            batches: Any = eval_set.subset(labels)
        else:  # its own inference preprocessing
            source = ImageSource(
                loaded.preprocessing, self.s.max_image_pixels, self.s.decode_threads
            )
            samples = [x for x in eval_set.samples if x.label in labels]
            batches = source.batches(samples, self.cfg.batch_size, source.eval_image)
        normalize = Normalizer(loaded.preprocessing, device)
        truth: list[str] = []
        predicted: list[str] = []
        with torch.inference_mode():
            for images, targets in batches:
                with autocast_context(device, autocast):
                    logits = model(normalize(images))
                truth += [labeled.classes[int(t)] for t in targets]
                predicted += [loaded.classes[int(i)] for i in logits.float().argmax(1).cpu()]
        del model, loaded
        accuracy, count = accuracy_on(truth, predicted, shared)
        return accuracy if count else None

    # --- save, then promote or reject ------------------------------------------------------------

    def _save_and_decide(
        self,
        loaded: modelzoo.LoadedModel,
        labeled: LabeledSet,
        report: dict[str, Any],
        verdict: GateVerdict,
        grid: tuple[list[np.ndarray], list[str], list[str]],
    ) -> RunOutcome:
        s = self.s
        self._emit("phase", phase="saving")
        with transaction(self.sessions) as session:
            version = ModelVersion(
                name=f"pending-{uuid.uuid4().hex}",
                arch=loaded.arch,
                weights="",
                classes=list(labeled.classes),
                status=ModelStatus.CANDIDATE.value,
                trained=True,
                val_accuracy=report["accuracy"],
                per_class_accuracy=report["per_class_accuracy"],
                manifest_sha256=report["manifest_sha256"],
                reason="awaiting the gate",
            )
            session.add(version)
            session.flush()
            version.name = f"v{version.id}"
            version.weights = str(
                model_store.version_dir(s.models_path, version.id) / model_store.MODEL_FILE
            )
            report["version"] = {"id": version.id, "name": version.name}
            version.report = report
            run = session.get(TrainingRun, self.run_id)
            if run is not None:
                run.model_version_id = version.id
            vid, vname = version.id, version.name

        title = f"{vname} ({loaded.arch}, {report['mode']}): val accuracy {report['accuracy']:.3f}"
        extra = {
            "report.json": report_json(report),
            "curves.png": curves_png(report["history"], report["best_epoch"], title),
            "val_grid.png": val_grid_png(*grid, title=title),
        }
        meta = {
            "version": vid,
            "name": vname,
            "arch": loaded.arch,
            "classes": loaded.classes,
            "val_accuracy": report["accuracy"],
            "manifest_sha256": report["manifest_sha256"],
            "run_id": self.run_id,
            "created_at": report["created_at"],
        }
        try:
            self._check_lock()
            model_store.save_version(s.models_path, vid, loaded, meta, extra)
        except Exception as exc:
            where = model_store.version_dir(s.models_path, vid)
            reason = f"could not save the model files to {where}: {type(exc).__name__}: {exc}"
            if isinstance(exc, OSError):
                reason += " (disk full or not writable?)"
            with transaction(self.sessions) as session:
                version_row = session.get(ModelVersion, vid)
                if version_row is not None:
                    version_row.status = ModelStatus.REJECTED.value
                    version_row.reason = reason
            return self._finish(
                RunStatus.FAILED, f"{reason}; the active model is unchanged", vid, vname, report
            )

        with transaction(self.sessions) as session:
            version_row = session.get(ModelVersion, vid)
            assert version_row is not None
            current = active_model(session)
            if current is not None and current.id != verdict.active_version_id and current.trained:
                # Someone promoted another version by hand meanwhile: do not override them.
                promote = False
                reason = (
                    f"not promoted: {current.name} was made active while this run trained "
                    f"({verdict.reason})"
                )
            else:
                promote, reason = verdict.promote, verdict.reason
            version_row.reason = reason
            if promote:
                activate(session, version_row)
            else:
                version_row.status = ModelStatus.REJECTED.value
        accuracy = f"val accuracy {report['accuracy']:.3f}"
        if promote:
            return self._finish(
                RunStatus.PROMOTED, f"{vname} promoted ({accuracy}): {reason}", vid, vname, report
            )
        return self._finish(
            RunStatus.REJECTED, f"{vname} rejected ({accuracy}): {reason}", vid, vname, report
        )
