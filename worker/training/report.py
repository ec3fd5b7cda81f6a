"""The training report: its JSON (:class:`~contract.reports.TrainingReport`) and its pictures,
loss/accuracy curves and a grid of validation images with their predicted and true labels.
Pictures are rendered with matplotlib's Agg canvas directly (no pyplot: no global figure
state, safe in a worker thread)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from contract.clock import iso, utcnow
from contract.reports import (
    CalibrationReport,
    ConfusionMatrix,
    EpochRecord,
    HoldoutReport,
    TrainingReport,
)
from worker.training.context import RunContext
from worker.training.fit import Fitted
from worker.training.gate import GateVerdict
from worker.training.recipe import describe

GRID_MAX = 25


def build_report(ctx: RunContext, fitted: Fitted, verdict: GateVerdict) -> TrainingReport:
    labeled, source, settings, how = ctx.labeled, ctx.source, ctx.settings, ctx.plan
    classes = labeled.classes
    final = fitted.final
    per_class = dict(zip(classes, final.per_class(len(classes)), strict=True))
    corrupt = labeled.corrupt[:100] + [
        {"path": p, "error": e} for p, e in list(source.failed.items())[:100]
    ]
    report = TrainingReport(
        run_id=ctx.run_id,
        trigger=ctx.trigger,
        arch=ctx.loaded.arch,
        classes=classes,
        accuracy=final.accuracy,
        val_loss=final.loss,
        per_class_accuracy=per_class,
        confusion_matrix=ConfusionMatrix(
            rows="true class",
            columns="predicted class",
            classes=classes,
            matrix=final.confusion(len(classes)),
        ),
        history=fitted.result.history,
        best_epoch=fitted.result.best_epoch,
        epochs_run=len(fitted.result.history),
        stopped_early=fitted.result.stopped_early,
        stopped_by_budget=fitted.result.stopped_by_budget,
        budget_s=settings.train_budget_s,
        images_per_class=labeled.images_per_class(),
        train_images=len(labeled.train),
        val_images=len(final.targets),
        val_split=(
            "labeled/_val folder"
            if labeled.explicit_val
            else f"content hash (val_fraction {settings.val_fraction:g})"
        )
        + f"; {len(labeled.holdout)} held out (holdout_fraction {settings.holdout_fraction:g})"
        + (
            f", {ctx.leaks['held_out_left_out']} of them not scored (near-twins of training "
            "images)"
            if ctx.leaks and ctx.leaks["held_out_left_out"]
            else ""
        ),
        skipped_corrupt=len(labeled.corrupt) + len(source.failed),
        corrupt_files=corrupt,
        warnings=labeled.warnings,
        started_from=ctx.start.started_from,
        head_rows_kept=ctx.head_rows_kept,
        mode=how.mode,
        mode_reason=how.reason,
        input_size=how.size_reason,
        notes=fitted.notes,
        config=asdict(ctx.config),
        device=str(ctx.device),
        autocast=str(ctx.autocast).replace("torch.", "") if ctx.autocast else "fp32",
        preprocessing=ctx.loaded.preprocessing.to_dict(),
        duration_s={k: round(v, 3) for k, v in ctx.durations.items()},
        manifest_sha256=ctx.manifest_sha256,
        gate=verdict.to_dict(),
        holdout=holdout_report(verdict, classes),
        recipe=describe(
            ctx.config,
            stem=(ctx.loaded.stem, ctx.stem_reason),
            augmentation=ctx.augmentation,
            planned_epochs=fitted.result.planned_epochs or None,
            seconds_per_epoch=[round(h["seconds"], 2) for h in fitted.result.history],
            precision=ctx.precision_reason
            or ("bf16" if ctx.autocast == torch.bfloat16 else "fp32"),
            content_side=ctx.labeled.content.side if ctx.labeled.content else None,
        ),
        threads=ctx.threads.summary(),
        created_at=iso(utcnow()) or "",
    )
    if ctx.leaks is not None:
        report["leak_guard"] = ctx.leaks
    return report


def holdout_report(verdict: GateVerdict, classes: Sequence[str]) -> HoldoutReport:
    """The candidate on the images versions are compared on, per class."""
    scored = verdict.candidate
    if scored is None:
        return HoldoutReport(
            images=0, correct=0, accuracy=None, per_class_accuracy={}, scored_on=verdict.on
        )
    accuracy, correct, images = scored.accuracy_on(set(classes))
    return HoldoutReport(
        images=images,
        correct=correct,
        accuracy=accuracy,
        per_class_accuracy={c: scored.accuracy_on({c})[0] for c in classes},
        scored_on=verdict.on,
    )


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def curves_png(history: Sequence[EpochRecord], best_epoch: int, title: str = "") -> bytes:
    epochs = [int(h["epoch"]) for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    curves = (
        (loss_ax, "train", [h["train_loss"] for h in history]),
        (loss_ax, "validation", [h["val_loss"] for h in history]),
        (acc_ax, "train", [h["train_acc"] for h in history]),
        (acc_ax, "validation", [h["val_acc"] for h in history]),
    )
    for ax, label, values in curves:
        ax.plot(epochs, values, marker="o", label=label)
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="kept")
        ax.legend()
    acc_ax.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    return _png(fig)


def val_grid_png(
    images: Sequence[np.ndarray], truth: Sequence[str], predicted: Sequence[str], title: str = ""
) -> bytes:
    """Up to 25 validation images (uint8 HWC), mistakes first; titles 'pred (true)' in red for
    a mistake, 'pred' in green when right."""
    order = sorted(range(len(images)), key=lambda i: (truth[i] == predicted[i], i))[:GRID_MAX]
    cols = max(1, min(5, len(order)))
    rows = max(1, -(-len(order) // cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, order, strict=False):
        ax.imshow(images[i])
        right = truth[i] == predicted[i]
        label = predicted[i] if right else f"{predicted[i]}\n(true: {truth[i]})"
        ax.set_title(label, fontsize=8, color="green" if right else "red")
    if title:
        fig.suptitle(title)
    return _png(fig)


def report_json(report: TrainingReport) -> bytes:
    return json.dumps(report, indent=2, sort_keys=False, default=str).encode()


def reliability_png(calibration: CalibrationReport, title: str = "") -> bytes:
    """The reliability diagram before and after temperature scaling: per confidence bin, the
    accuracy reached against the confidence claimed (the diagonal is perfect calibration)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], calibration["reliability_before"], calibration["ece_before"], "softmax"),
        (
            axes[1],
            calibration["reliability_after"],
            calibration["ece_after"],
            f"T = {calibration['temperature']:g}",
        ),
    )
    for ax, all_bins, ece, name in panels:
        bins = [b for b in all_bins if b["images"]]
        width = 1 / max(1, len(all_bins))
        ax.bar(
            [b["low"] for b in bins],
            [b["accuracy"] for b in bins],
            width=width,
            align="edge",
            edgecolor="white",
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        ax.scatter(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            color="black",
            s=12,
            zorder=3,
            label="mean confidence",
        )
        shown = "-" if ece is None else f"{ece:.3f}"
        ax.set_title(f"{name}: ECE {shown}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    return _png(fig)
