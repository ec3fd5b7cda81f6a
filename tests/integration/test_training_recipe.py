"""The from-scratch recipe (issue 23), on real runs: the small-input stem saved with the
version and served by ONNX Runtime int8; mirroring chosen from the data; the schedule sized to
TRAIN_BUDGET_S and the budget kept; the trainer's threads under load from another process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from contract.settings import Settings
from tests.helpers.training import COLOURS, training_settings, write_class
from worker.model import model_store, onnx_backend
from worker.model.layout import usable_cores
from worker.model.preprocess import load_for_model
from worker.training.augment import decide_flip
from worker.training.run import run_training
from worker.training.threads import ThreadChooser

pytestmark = pytest.mark.timeout(600)


def scratch_settings(settings: Settings, budget: float, **changes: object) -> Settings:
    """A retrain as `up --weights none` makes it: the recipe's own choices (no lr, optimizer,
    epochs or batch size given), within ``budget`` seconds."""
    s = training_settings(settings, train_mode="auto", train_budget_s=budget, **changes)
    given = s.model_fields_set - {"train_lr", "train_epochs", "train_batch_size", "torch_threads"}
    return Settings(**{name: getattr(s, name) for name in given if name not in changes} | changes)


def arrow(path: Path, right: bool, seed: int, side: int = 24) -> None:
    """A white arrow pointing left or right, somewhere on a dark noisy square."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 70, (side, side, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(7, side - 7))
    tip, tail = (side - 3, 4) if right else (3, side - 4)
    back = tip - 9 if right else tip + 9
    draw.polygon([(tip, y), (back, y - 5), (back, y + 5)], fill=(255, 255, 255))
    draw.rectangle((min(back, tail), y - 1, max(back, tail), y + 1), fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def arrows(root: Path, per_class: int) -> None:
    for i in range(per_class):
        arrow(root / "left" / f"{i:03d}.png", False, i)
        arrow(root / "right" / f"{i:03d}.png", True, 10_000 + i)


def test_small_inputs_train_with_the_small_stem_served_by_onnx_int8(
    settings: Settings, session_factory
) -> None:
    # Eight epochs of small batches, which a minute holds at stride 1; >= 64 validation images
    # to check int8 on.
    s = scratch_settings(settings, 60.0, train_epochs=8, train_batch_size=16, val_fraction=0.35)
    for name in COLOURS:
        write_class(s.labeled_path / name, COLOURS[name], 80, size=24)
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    recipe = out.report["recipe"]  # type: ignore[index]
    assert recipe["stem"] == "small" and "3x3 stride 1" in recipe["stem_reason"]
    assert "the budget holds about" in recipe["stem_reason"]
    assert recipe["schedule"].startswith("one-cycle") and recipe["label_smoothing"] == 0.1
    loaded = model_store.load_version(s.models_path, out.version_id)  # type: ignore[arg-type]
    assert loaded.stem == "small" and loaded.preprocessing.crop == 32
    conv1 = loaded.model.conv1  # type: ignore[union-attr]
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(loaded.model.maxpool, torch.nn.Identity)

    # Exported as it is: the int8 model passed its agreement check and serves the same labels.
    folder = s.models_path / str(out.version_id)
    manifest = onnx_backend.load_manifest(folder)
    assert manifest is not None and manifest.int8 is not None, manifest
    assert manifest.int8_check is not None and manifest.int8_check.passed
    images = [
        p
        for name in COLOURS
        for p in write_class(s.inbox / name, COLOURS[name], 4, seed=5, size=24)
    ]
    batch = np.stack([load_for_model(p.read_bytes(), loaded.preprocessing, 10**8) for p in images])
    serving = onnx_backend.serving_dir(folder)
    int8 = onnx_backend.run_session(
        onnx_backend.open_session(serving / "model.int8.onnx", 2), batch
    )
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    mean = torch.tensor(loaded.preprocessing.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(loaded.preprocessing.std).view(1, 3, 1, 1) * 255
    with torch.inference_mode():
        torch_top = loaded.model.eval()((x - mean) / std).argmax(1).numpy()
    assert (int8.argmax(1) == torch_top).mean() >= 0.9
    truth = [loaded.classes.index(p.parent.name) for p in images]
    assert (torch_top == np.array(truth)).mean() >= 0.9


def test_a_budget_too_short_for_the_full_resolution_stem_takes_stride_2(
    settings: Settings, session_factory
) -> None:
    s = scratch_settings(settings, 3.0)
    for name in COLOURS:
        write_class(s.labeled_path / name, COLOURS[name], 80, size=24)
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    recipe = out.report["recipe"]  # type: ignore[index]
    assert recipe["stem"] == "small-stride2", recipe["stem_reason"]
    assert "fewer than 12" in recipe["stem_reason"]
    loaded = model_store.load_version(s.models_path, out.version_id)  # type: ignore[arg-type]
    conv1 = loaded.model.conv1  # type: ignore[union-attr]
    assert loaded.stem == "small-stride2" and conv1.stride == (2, 2)
    assert isinstance(loaded.model.maxpool, torch.nn.Identity)


def test_mirroring_is_off_where_orientation_is_the_class(
    settings: Settings, session_factory
) -> None:
    arrows(settings.data_dir / "arrows", 60)
    images = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB"))
            for p in sorted((settings.data_dir / "arrows").rglob("*.png"))
        ]
    )
    labels = np.array([0] * 60 + [1] * 60)
    assert not decide_flip("auto", images, labels, 2).flip
    # Blobs whose class is their colour: a mirror keeps it.
    blobs = np.stack(
        [np.full((24, 24, 3), COLOURS[c], np.uint8) for c in COLOURS for _ in range(30)]
    )
    blobs = (blobs + np.random.default_rng(0).integers(0, 40, blobs.shape)).astype(np.uint8)
    assert decide_flip("auto", blobs, np.repeat(np.arange(3), 30), 3).flip
    assert decide_flip("off", blobs, np.repeat(np.arange(3), 30), 3).reason == "TRAIN_FLIP=off"

    # In a run: the report says it and why.
    s = scratch_settings(settings, 12.0)
    arrows(s.labeled_path, 40)
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    augmentation = out.report["recipe"]["augmentation"]  # type: ignore[index]
    assert augmentation["mirrored"] is False
    assert "look like another class" in augmentation["why"]
    assert "never mirrored" in augmentation["crops"]


def test_the_schedule_is_sized_to_the_budget_and_keeps_it(
    settings: Settings, session_factory
) -> None:
    budget = 20.0
    s = scratch_settings(settings, budget, train_patience=1000)  # nothing stops it early
    for name in COLOURS:
        write_class(s.labeled_path / name, COLOURS[name], 30, size=24)
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    report = out.report
    assert report is not None
    spent = report["duration_s"]["budgeted"]
    assert 0.9 * budget <= spent <= 1.1 * budget, spent
    planned = report["recipe"]["planned_epochs"]
    assert report["epochs_run"] == planned and planned >= 3 and report["stopped_by_budget"]
    assert len(report["recipe"]["seconds_per_epoch"]) == report["epochs_run"]
    assert report["threads"]["per_epoch"] and report["threads"]["reasons"]


BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"


def test_the_trainer_takes_the_cores_other_processes_leave(
    settings: Settings, session_factory
) -> None:
    cores = usable_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    chooser = ThreadChooser(None, torch.device("cpu"))
    burners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(cores - 1)]
    try:
        time.sleep(0.5)
        loaded = chooser.choose()
        assert loaded.threads == 1, loaded
        assert "other processes" in loaded.reason and loaded.others_busy is not None
        assert torch.get_num_threads() == 1
        s = scratch_settings(settings, 8.0)
        for name in COLOURS:
            write_class(s.labeled_path / name, COLOURS[name], 12, size=24)
        out = run_training(s, session_factory)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert out.status == "promoted", out.message
    threads = out.report["threads"]  # type: ignore[index]
    assert set(threads["per_epoch"]) == {1} and "other processes" in threads["reasons"][0]
    time.sleep(0.5)
    quiet = chooser.choose()
    assert quiet.threads == cores, quiet
    assert ThreadChooser(3, torch.device("cpu")).choose().reason == "TORCH_THREADS=3"
