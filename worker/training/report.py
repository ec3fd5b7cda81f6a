"""The training report's pictures: loss/accuracy curves and a grid of validation images with
their predicted and true labels. Rendered with matplotlib's Agg canvas directly (no pyplot:
no global figure state, safe in a worker thread)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

GRID_MAX = 25


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def curves_png(history: Sequence[dict[str, float]], best_epoch: int, title: str = "") -> bytes:
    epochs = [int(h["epoch"]) for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        acc_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
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


def report_json(report: dict[str, Any]) -> bytes:
    return json.dumps(report, indent=2, sort_keys=False, default=str).encode()
