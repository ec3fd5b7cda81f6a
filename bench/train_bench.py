"""Training benchmark: the learning loop's modes against a plain tutorial-style loop, on the
same real labeled photos, split and epochs.

Rows:

* ``full`` - ours, mode 'full': every layer trains (run end to end by run_training).
* ``frozen, cached`` - ours, mode 'frozen': one eval-mode backbone pass, the head trains on
  the cached features.
* ``frozen, cached +2 aug`` - the same plus two augmented (RandomResizedCrop/flip) passes.
* ``tutorial frozen`` - the torchvision transfer-learning tutorial's "fixed feature extractor":
  backbone frozen by requires_grad=False but rerun on every image every epoch, in train mode
  (BatchNorm statistics drift), DataLoader + torchvision transforms, fp32 (and once more with
  the same autocast as ours, to separate caching from precision).

The dataset: scikit-image's ``skimage.data.lfw_subset()`` - 200 real photos (25x25 grey) from
Labeled Faces in the Wild, 100 faces and 100 non-faces, shipped inside the scikit-image wheel
(nothing downloaded). It is tiny and low-resolution: times scale with image count, and the
accuracy only compares the approaches with each other. ImageNet weights cannot be downloaded
here, so by default the backbone is randomly initialised ('none'); pass --weights imagenet
(or a weights file) where torchvision's weights are available - frozen features are far
better with them.

    pip install scikit-image
    python -m bench.train_bench [--epochs 10] [--model resnet18] [--weights none]

Prints a markdown table and writes bench/results/train_bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.settings import Settings  # noqa: E402
from db import migrate  # noqa: E402
from worker.model import modelzoo  # noqa: E402
from worker.model.precision import pick_autocast  # noqa: E402
from worker.model.preprocess import Preprocessing  # noqa: E402
from worker.training.dataset import LabeledSet, Sample, scan_labeled  # noqa: E402
from worker.training.features import get_head, set_head  # noqa: E402
from worker.training.loop import TrainConfig, autocast_context, make_optimizer  # noqa: E402
from worker.training.run import run_training  # noqa: E402

DATASET = "skimage.data.lfw_subset (100 faces + 100 non-faces, real 25x25 grey photos)"


def write_lfw_subset(root: Path) -> Path:
    """The photos as labeled/face/*.png and labeled/non_face/*.png."""
    try:
        from skimage.data import lfw_subset
    except ImportError:
        sys.exit("this benchmark needs scikit-image (pip install scikit-image)")
    images = lfw_subset()  # (200, 25, 25) float in [0, 1]; the first 100 are faces
    for i, image in enumerate(images):
        folder = root / ("face" if i < 100 else "non_face")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).round().astype(np.uint8), "L").save(folder / f"{i:03d}.png")
    return root


# --- the tutorial-style baseline ----------------------------------------------------------------


class _Files(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, samples: list[Sample], transform: Any) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        with Image.open(sample.path) as image:
            return self.transform(image.convert("RGB")), sample.label


def tutorial_frozen(
    labeled: LabeledSet,
    arch: str,
    weights: str,
    cfg: TrainConfig,
    device: torch.device,
    autocast: torch.dtype | None,
) -> dict[str, Any]:
    """The tutorial's 'ConvNet as fixed feature extractor', as written there."""
    loaded = modelzoo.build(arch, weights)
    model = loaded.model
    prep = loaded.preprocessing
    for param in model.parameters():
        param.requires_grad = False
    head = get_head(model)
    set_head(model, nn.Linear(head.in_features, len(labeled.classes)))
    model = model.to(device)
    loaders = _tutorial_loaders(labeled, prep, cfg.batch_size)
    criterion = nn.CrossEntropyLoss()
    optimizer, scheduler = make_optimizer(get_head(model).parameters(), cfg)
    best_acc, best_state = -1.0, None
    history = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        record: dict[str, float] = {"epoch": epoch}
        for phase in ("train", "val"):
            loss, accuracy = _tutorial_phase(
                model, loaders[phase], phase == "train", criterion, optimizer, device, autocast
            )
            if phase == "train":
                scheduler.step()
            record[f"{phase}_loss"] = loss
            record[f"{phase}_acc"] = accuracy
        history.append(record)
        if record["val_acc"] > best_acc:
            best_acc = record["val_acc"]
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - start
    assert best_state is not None
    return {
        "val_acc": best_acc,
        "train_s": seconds,
        "total_s": seconds,
        "history": history,
        "epochs_run": cfg.epochs,
        "backbone_passes": f"{cfg.epochs} train + {cfg.epochs} val",
    }


def _tutorial_loaders(
    labeled: LabeledSet, prep: Preprocessing, batch_size: int
) -> dict[str, DataLoader[tuple[torch.Tensor, int]]]:
    """The tutorial's transforms and loaders: random crops and flips to train, resize and
    centre crop to validate."""
    normalize = transforms.Normalize(prep.mean, prep.std)
    train = transforms.Compose(
        [
            transforms.RandomResizedCrop(prep.crop),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    val = transforms.Compose(
        [
            transforms.Resize(prep.resize),
            transforms.CenterCrop(prep.crop),
            transforms.ToTensor(),
            normalize,
        ]
    )
    return {
        "train": DataLoader(
            _Files(labeled.train, train), batch_size=batch_size, shuffle=True, num_workers=2
        ),
        "val": DataLoader(
            _Files(labeled.val, val), batch_size=batch_size, shuffle=False, num_workers=2
        ),
    }


def _tutorial_phase(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    train: bool,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    autocast: torch.dtype | None,
) -> tuple[float, float]:
    """One pass over ``loader`` as the tutorial writes it (train mode, or eval mode without
    gradients): mean loss and accuracy."""
    model.train() if train else model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        with torch.set_grad_enabled(train), autocast_context(device, autocast):
            outputs = model(inputs)
        loss = criterion(outputs.float(), labels)
        if train:
            loss.backward()
            optimizer.step()
        loss_sum += loss.item() * inputs.size(0)
        correct += int((outputs.argmax(1) == labels).sum())
        seen += inputs.size(0)
    return loss_sum / seen, correct / seen


# --- ours ------------------------------------------------------------------------------------


def ours(settings: Settings, mode: str, cfg: TrainConfig, autocast: str) -> dict[str, Any]:
    """One run of the shipped code path, in a fresh ledger (no earlier model to gate against)."""
    data_dir = settings.data_dir.with_name(f"data-{time.monotonic_ns()}")
    settings = settings.model_copy(update={"data_dir": data_dir})
    migrate.upgrade(settings.db_url)
    start = time.perf_counter()
    outcome = run_training(settings, force=True, fresh=True, config=cfg, autocast=autocast)
    total = time.perf_counter() - start
    if outcome.report is None:
        raise SystemExit(f"training failed: {outcome.message}")
    report = outcome.report
    durations = report["duration_s"]
    return {
        "val_acc": report["accuracy"],
        "train_s": durations.get("features", 0.0) + durations.get("training", 0.0),
        "total_s": total,
        "history": report["history"],
        "epochs_run": report["epochs_run"],
        "backbone_passes": (
            f"{1 + cfg.feature_passes} train + 1 val"
            if mode == "frozen"
            else f"{report['epochs_run']} train (fwd+bwd) + {report['epochs_run']} val"
        ),
        "val_images": report["val_images"],
        "train_images": report["train_images"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="none", help="'none', 'imagenet' or a file")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--autocast", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        labeled, rows = run_rows(args, Path(tmp), device)
    table = render_table(args, labeled, rows, device)
    print(table)
    write_result(args, rows, table, device)


def run_rows(
    args: argparse.Namespace, work: Path, device: torch.device
) -> tuple[LabeledSet, list[dict[str, Any]]]:
    """Each approach on the same split: ours full, ours frozen (cached, then with two augmented
    passes), the tutorial's loop in fp32 (and in our autocast where there is one)."""
    labeled_root = write_lfw_subset(work / "labeled")
    settings = Settings(
        data_dir=work / "data",
        labeled_dir=labeled_root,
        model=args.model,
        weights=args.weights,
        redis_url=None,
        train_epochs=args.epochs,
        train_patience=args.epochs,
        train_batch_size=args.batch_size,
        train_lr=args.lr,
        min_images_per_class=2,
        torch_threads=args.threads,
    )
    dtype = pick_autocast(device, args.autocast)
    precision = "bf16" if dtype is not None else "fp32"
    labeled = scan_labeled(
        labeled_root,
        val_fraction=settings.val_fraction,
        min_images_per_class=2,
        max_pixels=settings.max_image_pixels,
    )
    base = TrainConfig.from_settings(settings)
    rows: list[dict[str, Any]] = []

    def row(name: str, result: dict[str, Any], prec: str) -> None:
        result.update({"approach": name, "precision": prec})
        rows.append(result)
        print(
            f"  {name}: val acc {result['val_acc']:.3f}, {result['train_s']:.1f}s",
            file=sys.stderr,
        )

    def config(**changes: Any) -> TrainConfig:
        return TrainConfig(**{**base.__dict__, **changes})

    print(f"{len(labeled.train)} train / {len(labeled.val)} val images", file=sys.stderr)
    full = settings.model_copy(update={"train_mode": "full"})
    row("ours: full", ours(full, "full", config(mode="full"), args.autocast), precision)
    frozen = settings.model_copy(update={"train_mode": "frozen"})
    row(
        "ours: frozen, cached features",
        ours(frozen, "frozen", config(mode="frozen"), args.autocast),
        precision,
    )
    row(
        "ours: frozen, cached + 2 augmented passes",
        ours(frozen, "frozen", config(mode="frozen", feature_passes=2), args.autocast),
        precision,
    )
    tutorial = "tutorial: frozen, backbone rerun every epoch"
    row(tutorial, tutorial_frozen(labeled, args.model, args.weights, base, device, None), "fp32")
    if dtype is not None:
        row(
            tutorial,
            tutorial_frozen(labeled, args.model, args.weights, base, device, dtype),
            precision,
        )
    return labeled, rows


def render_table(
    args: argparse.Namespace, labeled: LabeledSet, rows: list[dict[str, Any]], device: torch.device
) -> str:
    """The markdown table, with the speed-up of cached features over the tutorial's loop."""
    cached = rows[1]
    same = [
        r
        for r in rows
        if r["approach"].startswith("tutorial") and r["precision"] == cached["precision"]
    ]
    speedup = same[0]["train_s"] / cached["train_s"] if same else float("nan")
    lines = [
        f"Dataset: {DATASET}; {len(labeled.train)} train / {len(labeled.val)} val (hash split); "
        f"{args.model}, weights {args.weights}, {args.epochs} epochs, batch {args.batch_size}, "
        f"SGD lr {args.lr:g}; {device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "",
        "| approach | precision | epochs | backbone passes | train time (s) | total (s) "
        "| val accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['approach']} | {r['precision']} | {r['epochs_run']} | {r['backbone_passes']} "
            f"| {r['train_s']:.1f} | {r['total_s']:.1f} | {r['val_acc']:.3f} |"
        )
    lines.append("")
    lines.append(
        "train time: features + epochs (ours) or the epoch loop (tutorial); total adds model "
        "build, scan, evaluation, the gate, report plots and the saved model file (ours). "
        f"Frozen with cached features vs the tutorial loop at the same precision: "
        f"{speedup:.0f}x less training time."
    )
    return "\n".join(lines)


def write_result(
    args: argparse.Namespace, rows: list[dict[str, Any]], table: str, device: torch.device
) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "dataset": DATASET,
        "model": args.model,
        "weights": args.weights,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "table": table,
        "created_at": stamp,
    }
    path = args.out / f"train_bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
