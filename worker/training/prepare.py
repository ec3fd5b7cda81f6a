"""A run's preparation, once it knows its data changed: read, hash and split the labeled images
(every image once, decode-checked), choose the start model (the active one to fine-tune, or
the base, with a head for these classes), plan how to train it here (mode, input size, stem,
recipe), decode the validation and held-out images, and say the run started. The result is the
:class:`~worker.training.context.RunContext` every later step takes."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from contract import events
from contract.labeled import Listing, manifest_sha256
from contract.reports import EpochRecord
from contract.settings import Settings
from worker.model.precision import pick_autocast, pick_device
from worker.training.adapt import set_stem
from worker.training.batches import EvalSet, ImageSource
from worker.training.context import RunContext
from worker.training.dataset import LabeledSet, scan_labeled
from worker.training.features import remap_head
from worker.training.leaks import guard_holdout
from worker.training.loop import TrainConfig
from worker.training.plan import plan
from worker.training.progress import RunRecorder
from worker.training.recipe import recipe_config
from worker.training.start import ActiveInfo, start_model
from worker.training.threads import ThreadChooser


def prepare_context(
    s: Settings,
    rec: RunRecorder,
    listing: Listing,
    active: ActiveInfo | None,
    *,
    fresh: bool,
    config: TrainConfig,
    use_recipe: bool,
    autocast_spec: str,
    human_labels: Callable[[Collection[str]], Mapping[str, str | None]],
    on_epoch: Callable[[EpochRecord], None],
    check: Callable[[], None],
) -> RunContext:
    labeled = scan_labeled(
        s.labeled_path,
        val_fraction=s.val_fraction,
        holdout_fraction=s.holdout_fraction,
        min_images_per_class=s.min_images_per_class,
        max_pixels=s.max_image_pixels,
        threads=s.decode_threads,
        listing=listing,
        warn=rec.warn,
        human_labels=human_labels,
    )
    begin = start_model(s, active, labeled.classes, fresh)
    kept_rows = remap_head(begin.loaded.model, begin.loaded.classes, labeled.classes)
    begin.loaded.classes = list(labeled.classes)
    device = pick_device(s.device)
    how = plan(
        s.train_mode,
        device,
        begin.pretrained,
        begin.loaded.preprocessing,
        labeled.content,
        s.train_budget_s,
        begin.loaded.model,
        begin.loaded.stem,
    )
    begin.loaded.preprocessing = how.preprocessing
    if how.stem != begin.loaded.stem:
        set_stem(begin.loaded, how.stem, config.seed)
    config = recipe_config(s, how, config) if use_recipe else config
    _announce(rec, labeled, how.mode)
    source = ImageSource(how.preprocessing, s.max_image_pixels, s.decode_threads)
    t0 = time.perf_counter()
    eval_set = EvalSet(source, labeled.val, config.batch_size)
    scored_holdout, leaks = guard_holdout(labeled)
    holdout_set = EvalSet(source, scored_holdout, config.batch_size)
    return RunContext(
        settings=s,
        run_id=rec.run_id,
        trigger=rec.trigger,
        labeled=labeled,
        manifest_sha256=manifest_sha256(listing),
        active=active,
        start=begin,
        head_rows_kept=kept_rows,
        plan=how,
        device=device,
        autocast=pick_autocast(device, autocast_spec, training=True),
        config=config,
        threads=ThreadChooser(s.torch_threads, device),
        source=source,
        eval_set=eval_set,
        holdout_set=holdout_set,
        on_phase=rec.phase,
        on_epoch=on_epoch,
        check=check,
        deadline=time.monotonic() + s.train_budget_s if s.train_budget_s else None,
        durations={"decode": time.perf_counter() - t0},
        stem_reason=how.stem_reason,
        leaks=leaks,
    )


def _announce(rec: RunRecorder, labeled: LabeledSet, mode: str) -> None:
    """The run's progress and the console say what it is about to train on."""
    rec.phase(
        "preparing",
        classes=labeled.classes,
        train_images=len(labeled.train),
        val_images=len(labeled.val),
        holdout_images=len(labeled.holdout),
        mode=mode,
    )
    events.emit(
        events.RunStarted(
            run_id=rec.run_id or 0,
            trigger=str(rec.trigger),
            images=len(labeled.train) + len(labeled.val) + len(labeled.holdout),
            classes=len(labeled.classes),
        )
    )
