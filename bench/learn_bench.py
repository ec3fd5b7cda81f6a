"""Learning on a CPU, before and after calibration and the fast paths (issue 11), on a real
labeled set a package ships: scikit-learn's handwritten digits (1,797 8x8 grey images, 10
classes, inside the scikit-learn wheel: nothing downloaded).

    pip install scikit-learn
    mkdir -p /tmp/before && git archive d9f9c0e | tar -x -C /tmp/before   # the tree before
    python -m bench.learn_bench --before /tmp/before

A fifth of the digits (by content hash) is held out of labeled/ altogether. Both trees train
from scratch (weights none) on the rest, for at most ``--minutes`` each:

- before: the old default, every layer at 224 px, each image decoded again every epoch;
- after: TRAIN_MODE=auto (from scratch: every layer, at the data's size: 32 px), each image
  decoded once, with the time budget.

Measured: wall time to the first epoch at >= 0.90 validation accuracy (or the best reached),
and, for the trained model, on the held-out digits: accuracy, the expected calibration error
of the raw softmax and of the calibrated one, and the share of held-out images whose
conformal set holds the true class, against the target. Writes bench/results/learn-*.json.
"""

from __future__ import annotations

import argparse
import hashlib
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
from PIL import Image

from bench.harness import REPO, cpu_model, rmtree

RESULTS = REPO / "bench" / "results"
TARGET = 0.90

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
s = Settings(data_dir=data, inbox=data / "inbox", labeled_dir=data / "labeled", weights="none",
             redis_url=None, **values)
migrate.upgrade(s.db_url)
def progress(event):
    if event.get("event") == "epoch":
        print(json.dumps({"t": time.monotonic() - started, "epoch": event["epoch"],
                          "val_acc": event["val_acc"]}), flush=True)
out = run_training(s, on_progress=progress, force=True)
print(json.dumps({"done": time.monotonic() - started, "status": out.status,
                  "version_id": out.version_id, "message": out.message}), flush=True)
"""


def write_digits(root: Path) -> list[tuple[Path, int]]:
    """labeled/<digit>/ with four fifths of the digits; returns the held-out fifth."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    held_out = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), "L")
        sha = hashlib.sha256(f"{i}".encode()).hexdigest()
        if int(sha[:8], 16) / 2**32 < 0.2:
            path = root / "held_out" / f"{i:04d}.png"
            held_out.append((path, int(label)))
        else:
            path = root / "labeled" / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return held_out


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


def held_out_figures(data: Path, version_id: int, held: list[tuple[Path, int]]) -> dict[str, Any]:
    import torch

    from worker import model_store
    from worker.preprocess import load_for_model
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
    out: dict[str, Any] = {
        "held_out_images": len(held),
        "held_out_accuracy": round(float((raw.argmax(1) == labels).double().mean()), 4),
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
        out["needs_review_share"] = round(float((sets.sum(1) != 1).double().mean()), 4)
    out["int8"] = int8_figures(data / "models" / str(version_id), batch, labels.numpy())
    return out


def int8_figures(version_dir: Path, batch: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The version's ONNX Runtime fp32 and int8 models on the held-out digits, and the int8
    check the training run made on its validation split."""
    from worker import onnx_backend

    manifest = onnx_backend.load_manifest(version_dir)
    if manifest is None:
        return {"built": False}
    folder = onnx_backend.serving_dir(version_dir)
    fp32 = onnx_backend.run_session(onnx_backend.open_session(folder / "model.onnx", 2), batch)
    out: dict[str, Any] = {
        "validation_check": asdict(manifest.int8_check) if manifest.int8_check else None,
        "int8_reason": manifest.int8_reason,
        "held_out_fp32_accuracy": round(float((fp32.argmax(1) == labels).mean()), 4),
    }
    if manifest.int8 is not None:
        int8 = onnx_backend.run_session(
            onnx_backend.open_session(folder / "model.int8.onnx", 2), batch
        )
        out["held_out_int8_accuracy"] = round(float((int8.argmax(1) == labels).mean()), 4)
        out["held_out_agreement"] = round(float((int8.argmax(1) == fp32.argmax(1)).mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.learn_bench")
    parser.add_argument("--before", type=Path, default=None, help="an older tree, whole")
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inbox-learn-"))
    results: dict[str, Any] = {
        "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%d"),
        "target": TARGET,
    }
    try:
        held = write_digits(work / "after")
        common = {"val_fraction": 0.2, "min_images_per_class": 5, "torch_threads": os.cpu_count()}
        results["after"] = train(
            str(REPO),
            work / "after",
            {
                **common,
                "train_mode": "auto",
                "train_epochs": 200,
                "train_patience": 200,
                "train_optimizer": "adamw",
                "train_lr": 0.003,
                "train_step_size": 40,
                "train_budget_s": args.minutes * 60,
            },
            args.minutes,
        )
        print("after:", {k: v for k, v in results["after"].items() if k != "epochs"}, flush=True)
        if results["after"].get("version_id"):
            results["after"]["held_out"] = held_out_figures(
                work / "after", results["after"]["version_id"], held
            )
            print("held out:", results["after"]["held_out"], flush=True)
        if args.before is not None:
            write_digits(work / "before")
            results["before"] = train(
                f"{args.before.resolve()}{os.pathsep}{REPO}",
                work / "before",
                {
                    **common,
                    "train_mode": "full",
                    "train_epochs": 200,
                    "train_patience": 200,
                    "train_optimizer": "adamw",
                    "train_lr": 0.003,
                    "train_step_size": 40,
                },
                args.minutes,
            )
            print(
                "before:", {k: v for k, v in results["before"].items() if k != "epochs"}, flush=True
            )
    finally:
        rmtree(work)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"learn-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
