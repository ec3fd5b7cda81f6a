"""One training run, start to finish, as :func:`run_training` reads top to bottom:

    lock -> claim the run row -> reap dead runs -> scan labeled/ (skip if unchanged) -> split
    -> start model -> fit -> evaluate -> gate -> report -> save -> promote or reject

Called by the Celery task (:mod:`worker.training.task`) and by ``inbox-classifier retrain
--wait`` in-process. Each step lives in a module named for it; the ledger side of the run's
state machine is :mod:`db.runs`. The ledger records everything: a ``training_runs`` row
(running -> promoted / rejected / skipped / failed, with progress and a message) and, for a
trained model, a ``model_versions`` row (candidate -> active / rejected) created before its
files are written. Files are written atomically (:func:`worker.model.model_store.save_version`),
so a killed run leaves nothing half-written; the next run marks the dead run failed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Collection, Iterator

import torch
from sqlalchemy.orm import Session, sessionmaker

from contract import events
from contract.labeled import Listing, manifest_sha256
from contract.messages import Trigger
from contract.reports import CalibrationReport, EpochRecord, TrainingReport
from contract.settings import Settings
from db import labels, runs, suspects, versions
from db.engine import LazySessions, transaction
from db.models import RunStatus
from objectstore.labeled import mirror_for
from worker.training.adapt import adapt_to_data
from worker.training.backfill import backfill
from worker.training.batches import DecodedCache
from worker.training.calibration import calibrate
from worker.training.context import RunContext
from worker.training.dataset import TrainingRefused, list_labeled
from worker.training.fit import Fitted, fit_model
from worker.training.gate import GateVerdict, judge
from worker.training.lock import LOCK_TIMEOUT_S, TrainingLock
from worker.training.loop import TrainConfig
from worker.training.prepare import prepare_context
from worker.training.progress import Progress, RunCancelled, RunOutcome, RunRecorder
from worker.training.report import GRID_MAX, build_report
from worker.training.save import ValGrid, save_and_settle, serving_builder
from worker.training.skip import has_class_dirs, unchanged_reason
from worker.training.start import ActiveInfo
from worker.training.suspects import score_labels
from worker.training.threads import torch_threads

log = logging.getLogger(__name__)


def create_queued_run(sessions: sessionmaker[Session], trigger: Trigger = Trigger.MANUAL) -> int:
    """A run row for a request that a worker will pick up (``retrain`` without ``--wait``)."""
    with transaction(sessions) as session:
        return runs.create_queued(session, trigger)


def run_training(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    trigger: Trigger = Trigger.MANUAL,
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
            recipe=config is None,  # a config passed in is used as it is
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
        recipe: bool = True,
    ) -> None:
        self.s = settings
        self.sessions = sessions
        self.rec = recorder
        self.force = force
        self.fresh = fresh
        self.autocast_spec = autocast
        self.lock = TrainingLock(settings.redis_url, lock_timeout_s)
        self.cfg = config
        self.use_recipe = recipe
        self.started = time.perf_counter()
        self.active: ActiveInfo | None = None

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
            with torch_threads(self.s.torch_threads):
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
        listing = self._scan()
        if isinstance(listing, RunOutcome):
            return listing
        ctx = self._prepare(listing)
        fitted = self._fit(ctx)
        verdict = self._gate(ctx)
        calibration_report = self._calibrate(ctx, fitted, verdict)
        report = build_report(ctx, fitted, verdict)
        report["calibration"] = calibration_report
        self._score_labels(ctx, report)
        return self._save(ctx, fitted, verdict, report)

    # --- the steps ------------------------------------------------------------------------------

    def _scan(self) -> Listing | RunOutcome:
        """List labeled/ (stat only): enough to know the data did not change."""
        s, rec = self.s, self.rec
        rec.phase("scanning", labeled=str(s.labeled_path))
        mirror_for(s)  # a bucket inbox: its labeled/ first (objectstore.labeled)
        if rec.trigger == Trigger.SCHEDULE and not has_class_dirs(s.labeled_path):
            # Nobody labels anything here (yet): an hourly 'failed' would only be noise.
            return rec.finish(RunStatus.SKIPPED, f"no labeled class folders in {s.labeled_path}")
        listing = list_labeled(s.labeled_path)
        self.active = self._active()
        why = unchanged_reason(self.sessions, manifest_sha256(listing), self.active)
        if not self.force and why:
            return rec.finish(RunStatus.SKIPPED, f"{why}; nothing to do (--force retrains)")
        return listing

    def _prepare(self, listing: Listing) -> RunContext:
        """The run's context (worker.training.prepare)."""
        return prepare_context(
            self.s,
            self.rec,
            listing,
            self.active,
            fresh=self.fresh,
            config=self.cfg,
            use_recipe=self.use_recipe,
            autocast_spec=self.autocast_spec,
            human_labels=self._human_labels,
            on_epoch=self._on_epoch,
            check=self._check_running,
        )

    def _fit(self, ctx: RunContext) -> Fitted:
        """Decode the training images once, fit, evaluate the kept weights on validation."""
        device = ctx.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ctx.config.seed)
            t0 = time.perf_counter()
            cache = DecodedCache(ctx.source, ctx.labeled.train, self.s.data_dir / "cache")
            ctx.durations["decode"] += time.perf_counter() - t0
            adapt_to_data(ctx, cache)
            ctx.start.loaded.model = ctx.model.to(device)
            try:
                fitted = fit_model(ctx, cache)
            finally:
                cache.close()
        if ctx.deadline is not None and self.s.train_budget_s:
            # From the budget's start (the end of preparing) to the fitted model.
            started = ctx.deadline - self.s.train_budget_s
            ctx.durations["budgeted"] = time.monotonic() - started
        ctx.durations.update(fitted.seconds)
        self._check_running()
        ctx.start.loaded.model = ctx.model.cpu().eval()
        return fitted

    def _calibrate(
        self, ctx: RunContext, fitted: Fitted, verdict: GateVerdict
    ) -> CalibrationReport:
        """What its confidences mean, fitted on the validation images; the temperature kept
        only if it helps the held-out ones."""
        check_logits = check_labels = None
        scored = verdict.candidate
        if verdict.on == "held-out" and scored is not None and scored.logits is not None:
            index = {c: i for i, c in enumerate(ctx.classes)}
            check_logits = scored.logits
            check_labels = torch.tensor([index[t] for t in scored.truth], dtype=torch.int64)
        calibration, report = calibrate(
            fitted.final.logits,
            torch.tensor(fitted.final.targets, dtype=torch.int64),
            ctx.classes,
            self.s.coverage,
            self.s.target_precision,
            check_logits,
            check_labels,
        )
        ctx.start.loaded.calibration = calibration
        return report

    def _score_labels(self, ctx: RunContext, report: TrainingReport) -> None:
        """How much a model that never saw each label doubts it (worker.training.suspects); a
        failure here costs the suspects list, not the run."""
        self.rec.phase("suspects")
        try:
            ctx.suspects, report["suspects"] = score_labels(ctx)
        except Exception as exc:
            log.exception("run %s: scoring the labels failed", self.rec.run_id)
            report["warnings"].append(f"suspect labels not scored: {type(exc).__name__}: {exc}")

    def _gate(self, ctx: RunContext) -> GateVerdict:
        """The candidate against the active model, on the same held-out images."""
        compared = ctx.active.name if ctx.active is not None and ctx.active.trained else None
        self.rec.phase("gate", compared_with=compared)
        verdict = judge(ctx)
        ctx.durations["total"] = time.perf_counter() - self.started
        return verdict

    def _save(
        self, ctx: RunContext, fitted: Fitted, verdict: GateVerdict, report: TrainingReport
    ) -> RunOutcome:
        """Save the version (and its ONNX artifacts), then promote or reject it."""
        rec = self.rec
        truth, predicted = self._truth(ctx, fitted), self._predicted(ctx, fitted)
        shown = sorted(range(len(truth)), key=lambda i: (truth[i] == predicted[i], i))[:GRID_MAX]
        grid = ValGrid(
            ctx.eval_set.images(shown), [truth[i] for i in shown], [predicted[i] for i in shown]
        )
        rec.phase("saving")
        saved = save_and_settle(
            self.sessions,
            self.s.models_path,
            ctx.loaded,
            report,
            verdict,
            grid,
            run_id=rec.run_id,
            check=self._check_lock,
            build_serving=serving_builder(ctx, self.sessions, fitted.final.targets),
        )
        accuracy = verdict.accuracy_phrase(report["accuracy"])
        if saved.failed:
            status, message = RunStatus.FAILED, f"{saved.reason}; the active model is unchanged"
        elif saved.promoted:
            status, message = RunStatus.PROMOTED, f"{saved.name} promoted ({accuracy}): "
        else:
            status, message = RunStatus.REJECTED, f"{saved.name} rejected ({accuracy}): "
        if not saved.failed:
            message += saved.reason
        self._record_scores(ctx, verdict, saved.version_id)
        if rec.run_id is not None and ctx.suspects:
            with transaction(self.sessions) as session:
                suspects.save_seen(session, rec.run_id, ctx.suspects)
        outcome = rec.finish(status, message, saved.version_id, saved.name, report)
        if saved.promoted:
            events.emit(
                events.Promoted(
                    version=saved.name,
                    accuracy=verdict.candidate_accuracy,
                    previous=verdict.active_name,
                    previous_accuracy=verdict.active_accuracy,
                    images=verdict.images,
                )
            )
            rescored = backfill(self.s, self.sessions, saved.version_id)
            if rescored:
                events.emit(events.Rescoring(version=saved.name, images=rescored))
        elif not saved.failed:
            events.emit(events.RunEnded(rec.run_id or 0, status.value, message))
        return outcome

    def _record_scores(self, ctx: RunContext, verdict: GateVerdict, version_id: int | None) -> None:
        """Keep both models' scores on the held-out images: the Models page charts them."""
        if verdict.on != "held-out" or version_id is None or verdict.candidate is None:
            return
        _, correct, images = verdict.candidate.accuracy_on(set(ctx.classes))
        with transaction(self.sessions) as session:
            versions.record_score(session, version_id, self.rec.run_id, images, correct)
            if verdict.active_version_id is not None and verdict.active_accuracy is not None:
                versions.record_score(
                    session,
                    verdict.active_version_id,
                    self.rec.run_id,
                    verdict.images,
                    verdict.active_correct,
                )

    @staticmethod
    def _truth(ctx: RunContext, fitted: Fitted) -> list[str]:
        return [ctx.classes[t] for t in fitted.final.targets]

    @staticmethod
    def _predicted(ctx: RunContext, fitted: Fitted) -> list[str]:
        return [ctx.classes[p] for p in fitted.final.preds]

    # --- helpers --------------------------------------------------------------------------------

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
        # What the budget planned, once it has (after the first epochs), else the most it may run.
        epochs = int(record.get("planned_epochs") or self.cfg.epochs)
        self.rec.emit(
            "epoch", write=record["epoch"] == epochs, phase="training", epochs=epochs, **record
        )
        self.rec.poll_cancel()
        self._check_running()

    def _human_labels(self, shas: Collection[str]) -> dict[str, str | None]:
        with transaction(self.sessions) as session:
            return labels.human_labels_of(session, list(shas))

    def _active(self) -> ActiveInfo | None:
        with transaction(self.sessions) as session:
            row = versions.active_model(session)
            return versions.VersionView.of(row) if row is not None else None

