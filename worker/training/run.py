"""One training run, start to finish, as :func:`run_training` reads top to bottom:

    lock -> claim the run row -> reap dead runs -> scan labeled/ (skip if unchanged) -> split
    -> start model -> fit -> evaluate -> gate -> report -> save -> promote or reject

Called by the Celery task (:mod:`worker.training.task`) and by ``inbox-classifier retrain
--wait`` in-process. Each step lives in a module named for it; the ledger side of the run's
state machine is :mod:`db.runs`. The ledger records everything: a ``training_runs`` row
(running -> promoted / rejected / skipped / failed, with progress and a message) and, for a
trained model, a ``model_versions`` row (candidate -> active / rejected) created before its
files are written. Files are written atomically (:func:`worker.model_store.save_version`),
so a killed run leaves nothing half-written; the next run marks the dead run failed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from contract.reports import EpochRecord
from contract.settings import Settings
from db import runs, versions
from db.engine import LazySessions, transaction
from db.models import RunStatus
from worker import model_store, onnx_backend
from worker.layout import usable_cores
from worker.modelzoo import LoadedModel
from worker.precision import pick_autocast, pick_device
from worker.serving import torch_reason
from worker.training.backfill import backfill
from worker.training.batches import DecodedCache, EvalSet, ImageSource
from worker.training.calibration import calibrate
from worker.training.dataset import TrainingRefused, list_labeled, manifest_sha256, scan_labeled
from worker.training.features import remap_head
from worker.training.fit import FitInputs, fit_model
from worker.training.gate import GateInputs, judge
from worker.training.lock import LOCK_TIMEOUT_S, TrainingLock
from worker.training.loop import TrainConfig
from worker.training.plan import plan
from worker.training.progress import Progress, RunCancelled, RunOutcome, RunRecorder
from worker.training.report import GRID_MAX, RunFacts, build_report
from worker.training.save import ValGrid, save_and_settle
from worker.training.skip import has_class_dirs, unchanged_reason
from worker.training.start import ActiveInfo, start_model

log = logging.getLogger(__name__)


def create_queued_run(sessions: sessionmaker[Session], trigger: str = "manual") -> int:
    """A run row for a request that a worker will pick up (``retrain`` without ``--wait``)."""
    with transaction(sessions) as session:
        return runs.create_queued(session, trigger)


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
    active model could be fine-tuned. ``autocast``: 'auto', 'bf16' or 'fp32' (default: the
    PRECISION setting, as inference uses it)."""
    with _ledger(settings, sessions) as factory:
        run = _Run(
            settings,
            factory,
            RunRecorder(factory, trigger, run_id, on_progress),
            force=force,
            fresh=fresh,
            autocast=autocast or settings.precision,
            lock_timeout_s=lock_timeout_s,
            config=config or TrainConfig.from_settings(settings),
        )
        return run.run()


@contextlib.contextmanager
def _ledger(
    settings: Settings, sessions: sessionmaker[Session] | None
) -> Iterator[sessionmaker[Session]]:
    if sessions is not None:
        yield sessions
        return
    own = LazySessions(settings.db_url)
    try:
        yield own.get()
    finally:
        own.close()


class _Run:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        recorder: RunRecorder,
        *,
        force: bool,
        fresh: bool,
        autocast: str,
        lock_timeout_s: float,
        config: TrainConfig,
    ) -> None:
        self.s = settings
        self.sessions = sessions
        self.rec = recorder
        self.force = force
        self.fresh = fresh
        self.autocast_spec = autocast
        self.lock = TrainingLock(settings.redis_url, lock_timeout_s)
        self.cfg = config
        self.started = time.perf_counter()

    # --- the run, top to bottom ----------------------------------------------------------------

    def run(self) -> RunOutcome:
        if not self.lock.acquire():
            return self.rec.skip_busy()
        try:
            with transaction(self.sessions) as session:
                run_id, done = runs.claim(session, self.rec.run_id, self.rec.trigger)
            if done is not None:  # a redelivered request for a run that finished
                return RunOutcome.of(done)
            self.rec.started(run_id)
            with transaction(self.sessions) as session:
                live = runs.reap_stale(session, run_id, self.lock.stale_after())
            if live is not None:
                return self.rec.finish(
                    RunStatus.SKIPPED, f"another training run is in progress (run {live})"
                )
            self.lock.start_heartbeat(self.rec.heartbeat)
            return self._train_guarded()
        finally:
            self.lock.release()

    def _train_guarded(self) -> RunOutcome:
        try:
            with _torch_threads(self.s.torch_threads):
                return self._train()
        except TrainingRefused as exc:
            return self.rec.finish(RunStatus.FAILED, f"refused: {exc}")
        except RunCancelled:
            epoch = self.rec.progress.get("epoch")
            where = f" after epoch {epoch}" if epoch else ""
            return self.rec.finish(
                RunStatus.CANCELLED, f"cancelled by request{where}; nothing was promoted"
            )
        except Exception as exc:
            log.exception("training run %s failed", self.rec.run_id)
            return self.rec.finish(RunStatus.FAILED, f"failed: {type(exc).__name__}: {exc}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _train(self) -> RunOutcome:
        s, cfg, rec = self.s, self.cfg, self.rec
        # Scan: a listing (stat only) is enough to know the data did not change.
        rec.phase("scanning", labeled=str(s.labeled_path))
        if rec.trigger == "schedule" and not has_class_dirs(s.labeled_path):
            # Nobody labels anything here (yet): an hourly 'failed' would only be noise.
            return rec.finish(RunStatus.SKIPPED, f"no labeled class folders in {s.labeled_path}")
        listing = list_labeled(s.labeled_path)
        manifest = manifest_sha256(listing)
        active = self._active()
        if not self.force and (why := unchanged_reason(self.sessions, manifest, active)):
            return rec.finish(RunStatus.SKIPPED, f"{why}; nothing to do (--force retrains)")

        # Split: every image read once, hashed (the split) and decode-checked.
        labeled = scan_labeled(
            s.labeled_path,
            val_fraction=s.val_fraction,
            min_images_per_class=s.min_images_per_class,
            max_pixels=s.max_image_pixels,
            threads=s.decode_threads,
            listing=listing,
            warn=rec.warn,
        )

        # Start model: fine-tune the active one, or the base, with a head for these classes;
        # the plan: how to train it here, at which input size.
        begin = start_model(s, active, labeled.classes, self.fresh)
        start = begin.loaded
        kept_rows = remap_head(start.model, start.classes, labeled.classes)
        start.classes = list(labeled.classes)
        device = pick_device(s.device)
        how = plan(
            s.train_mode,
            device,
            begin.pretrained,
            start.preprocessing,
            labeled.typical_shorter_side,
            s.train_budget_s,
        )
        start.preprocessing = how.preprocessing
        rec.phase(
            "preparing",
            classes=labeled.classes,
            train_images=len(labeled.train),
            val_images=len(labeled.val),
            mode=how.mode,
        )

        # Decode every image once, fit, then evaluate the kept weights on the validation set.
        autocast = pick_autocast(device, self.autocast_spec, training=True)
        source = ImageSource(start.preprocessing, s.max_image_pixels, s.decode_threads)
        durations: dict[str, float] = {}
        deadline = time.monotonic() + s.train_budget_s if s.train_budget_s else None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            t0 = time.perf_counter()
            eval_set = EvalSet(source, labeled.val, cfg.batch_size)
            cache = DecodedCache(source, labeled.train, s.data_dir / "cache")
            durations["decode"] = time.perf_counter() - t0
            try:
                fitted = fit_model(
                    FitInputs(
                        model=start.model.to(device),
                        labeled=labeled,
                        source=source,
                        eval_set=eval_set,
                        train_cache=cache,
                        device=device,
                        autocast=autocast,
                        config=cfg,
                        on_phase=rec.phase,
                        on_epoch=self._on_epoch,
                        check=self._check_running,
                        deadline=deadline,
                    ),
                    how.mode,
                )
            finally:
                cache.close()
        durations.update(fitted.seconds)
        self._check_running()
        start.model = start.model.cpu().eval()

        # Calibrate: what its confidences mean, from the same validation images.
        calibration, calibration_report = calibrate(
            fitted.final.logits,
            torch.tensor(fitted.final.targets, dtype=torch.int64),
            labeled.classes,
            s.coverage,
            s.target_precision,
        )
        start.calibration = calibration

        # Gate: the candidate against the active model, on the same validation images.
        classes = labeled.classes
        truth = [classes[t] for t in fitted.final.targets]
        predicted = [classes[p] for p in fitted.final.preds]
        if active is not None and active.trained:
            rec.phase("gate", compared_with=active.name)
        verdict = judge(
            active,
            GateInputs(
                classes=classes,
                truth=truth,
                predicted=predicted,
                eval_set=eval_set,
                models_dir=s.models_path,
                max_pixels=s.max_image_pixels,
                decode_threads=s.decode_threads,
                batch_size=cfg.batch_size,
                device=device,
                autocast=autocast,
            ),
            s.gate_margin,
        )
        durations["total"] = time.perf_counter() - self.started

        # Report, save, then promote or reject.
        facts = RunFacts(
            run_id=rec.run_id,
            trigger=rec.trigger,
            arch=start.arch,
            started_from=begin.started_from,
            head_rows_kept=kept_rows,
            device=device,
            autocast=autocast,
            preprocessing=start.preprocessing,
            manifest_sha256=manifest,
            durations=durations,
        )
        report = build_report(facts, labeled, source, fitted, verdict, cfg, s, how)
        report["calibration"] = calibration_report
        shown = sorted(range(len(truth)), key=lambda i: (truth[i] == predicted[i], i))[:GRID_MAX]
        grid = ValGrid(
            eval_set.images(shown), [truth[i] for i in shown], [predicted[i] for i in shown]
        )
        rec.phase("saving")
        saved = save_and_settle(
            self.sessions,
            s.models_path,
            start,
            report,
            verdict,
            grid,
            run_id=rec.run_id,
            check=self._check_lock,
            build_serving=self._serving_builder(start, eval_set, fitted.final.targets),
        )
        accuracy = f"val accuracy {report['accuracy']:.3f}"
        if saved.failed:
            status, message = RunStatus.FAILED, f"{saved.reason}; the active model is unchanged"
        elif saved.promoted:
            status, message = RunStatus.PROMOTED, f"{saved.name} promoted ({accuracy}): "
        else:
            status, message = RunStatus.REJECTED, f"{saved.name} rejected ({accuracy}): "
        if not saved.failed:
            message += saved.reason
        outcome = rec.finish(status, message, saved.version_id, saved.name, report)
        if saved.promoted:
            backfill(s, self.sessions, saved.version_id)
        return outcome

    # --- helpers --------------------------------------------------------------------------------

    def _serving_builder(
        self, loaded: LoadedModel, eval_set: EvalSet, targets: Sequence[int]
    ) -> Callable[[int, Path], None] | None:
        """Builds the version's ONNX artifacts, int8 calibrated and checked on the validation
        split, where CPU workers will serve with ONNX Runtime. A failure is logged and the
        workers serve the version with torch."""
        s = self.s
        if (why := torch_reason(s, "cpu")) is not None:
            log.info("no ONNX artifacts built: %s", why)
            return None

        def build(version_id: int, folder: Path) -> None:
            self.rec.phase("serving")
            count = min(len(targets), onnx_backend.SAMPLE_IMAGES)
            try:
                manifest = onnx_backend.build(
                    loaded,
                    folder,
                    np.stack(eval_set.images(list(range(count)))),
                    list(targets[:count]),
                    weights_sha256=onnx_backend.sha256_file(folder / model_store.MODEL_FILE),
                    built_from=f"{count} validation images",
                    min_agreement=s.int8_min_agreement,
                    margin=s.gate_margin,
                    threads=s.torch_threads or usable_cores(),
                )
                with transaction(self.sessions) as session:
                    versions.set_serving(
                        session, version_id, onnx_backend.summary(manifest, s.inference_backend)
                    )
            except Exception:
                log.exception("version %d: could not build its ONNX artifacts", version_id)

        return build

    def _check_lock(self) -> None:
        if self.lock.lost:
            raise RuntimeError("lost the training lock to another run; stopping this one")

    def _check_running(self) -> None:
        """Between epochs and passes: stop if the lock was lost or someone asked to stop.
        (Not while saving: once a candidate exists, the run finishes what it started.)"""
        self._check_lock()
        if self.rec.cancel_requested:
            raise RunCancelled()

    def _on_epoch(self, record: EpochRecord) -> None:
        self._check_lock()
        epochs = self.cfg.epochs
        self.rec.emit(
            "epoch", write=record["epoch"] == epochs, phase="training", epochs=epochs, **record
        )
        self.rec.poll_cancel()
        self._check_running()

    def _active(self) -> ActiveInfo | None:
        with transaction(self.sessions) as session:
            row = versions.active_model(session)
            return ActiveInfo.of(row) if row is not None else None


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
