"""The mistakes a person cannot see (issue 32), measured on a 2-core CPU:

    python -m bench.mistakes [--minutes 5] [--skip-training]

- **Suspect labels.** Fashion-MNIST, 10 classes x 300 labeled, 8 % of the labels flipped at
  random (to another class, by moving the file); a training run from random weights (the
  user's ``retrain``); how many of the flipped ones are in the top 240 and top 480 of the
  suspects, and the seconds the scoring took after training.
- **Near-duplicates.** 200 distinct images and re-saved copies of 50 of them (JPEG quality 60,
  resized to 0.8, cropped by 4 %), three kinds of images: photo-like scenes
  (:mod:`bench.images`), Fashion-MNIST at 64 px and at 28 px; the share of copies grouped with
  their original and of distinct images put in any group, with the threshold calibrated on
  the collection (:func:`imaging.perceptual.calibrated_threshold`).
- **Review.** The same ledger with the copies as the least certain images: near-duplicates
  among the first 20 of the review queue.
- **Grouping cost.** Seconds for a pass over 5,000, 10,000 and 20,000 hashes.

Writes bench/results/mistakes-*.json; the figures are in docs/web.md and docs/training.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.harness import REPO, cpu_model
from bench.learn_data import fashion_arrays, write_fashion

RESULTS = REPO / "bench" / "results"
FLIP_SHARE = 0.08


def flip_labels(labeled: Path, share: float, seed: int = 0) -> set[str]:
    """Move ``share`` of the images into another class's folder at random; their new paths
    (under ``labeled``)."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in labeled.iterdir() if p.is_dir())
    files = sorted(p for c in classes for p in (labeled / c).iterdir())
    chosen = rng.choice(len(files), size=round(share * len(files)), replace=False)
    flipped = set()
    for index in chosen.tolist():
        path = files[index]
        others = [c for c in classes if c != path.parent.name]
        target = labeled / others[int(rng.integers(len(others)))] / f"flip-{path.name}"
        shutil.move(path, target)
        flipped.add(f"{target.parent.name}/{target.name}")
    return flipped


def suspects_figures(minutes: float) -> dict[str, Any]:
    from contract.settings import Settings
    from db import migrate
    from db import suspects as store
    from db.engine import make_engine, make_sessionmaker, transaction
    from worker.training.run import run_training

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fashion(root, labeled=300, unseen_per_class=0)
        labeled = root / "labeled"
        flipped = flip_labels(labeled, FLIP_SHARE)
        s = Settings(
            data_dir=root / "data",
            inbox=root / "inbox",
            labeled_dir=labeled,
            redis_url=None,
            weights="none",
            train_budget_s=minutes * 60,
        )
        migrate.upgrade(s.db_url)
        sessions = make_sessionmaker(make_engine(s.db_url))
        started = time.monotonic()
        out = run_training(s, sessions, force=True)
        seconds = time.monotonic() - started
        with transaction(sessions) as session:
            ranked = [r.path for r in store.suspects(session, 100_000)]
        report: dict[str, Any] = dict(out.report or {})
    found = {n: len(set(ranked[:n]) & flipped) for n in (240, 480)}
    return {
        "images": len(ranked),
        "flipped": len(flipped),
        "in_top_240": found[240],
        "in_top_480": found[480],
        "share_top_240": round(found[240] / len(flipped), 3),
        "share_top_480": round(found[480] / len(flipped), 3),
        "scoring_seconds": report.get("suspects", {}).get("seconds"),
        "run_seconds": round(seconds, 1),
        "status": out.status,
        "message": out.message,
        "accuracy": report.get("accuracy"),
    }


def _copy(image: Image.Image) -> bytes:
    width, height = image.size
    dx, dy = round(width * 0.02), round(height * 0.02)
    edited = image.convert("RGB").crop((dx, dy, width - dx, height - dy))
    edited = edited.resize(
        (max(1, round(edited.width * 0.8)), max(1, round(edited.height * 0.8))),
        Image.Resampling.BILINEAR,
    )
    out = io.BytesIO()
    edited.save(out, "JPEG", quality=60)
    return out.getvalue()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def collections() -> dict[str, list[Image.Image]]:
    from bench.images import generate

    fashion = fashion_arrays()
    pick = [Image.fromarray(fashion[i % 10][300 + i // 10]) for i in range(200)]
    photos = [Image.open(f).convert("RGB") for f in generate(200).files[:200]]
    return {
        "photos": photos,
        "fashion-64px": [image.resize((64, 64), Image.Resampling.BICUBIC) for image in pick],
        "fashion-28px": pick,
    }


def near_duplicate_figures(images: list[Image.Image]) -> dict[str, Any]:
    from imaging.perceptual import as_words, calibrated_threshold, file_phash, groups

    files = [_png(image) for image in images] + [_copy(image) for image in images[:50]]
    started = time.perf_counter()
    words = as_words([file_phash(data, 10**9) for data in files])
    hashed = time.perf_counter()
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(files), size=120, replace=False).tolist())
    threshold = calibrated_threshold([files[i] for i in sample], sample, words)
    found = groups(words, threshold.bits)
    group_of = {row: n for n, group in enumerate(found) for row in group}
    joined = sum(1 for k in range(50) if group_of.get(200 + k, -1) == group_of.get(k, -2))
    strays = sum(1 for row in range(50, 200) if row in group_of)
    return {
        "copies_grouped": round(joined / 50, 3),
        "distinct_in_a_group": round(strays / 150, 3),
        "threshold_bits": threshold.bits,
        "threshold": threshold.reason,
        "hash_ms_per_image": round((hashed - started) * 1000 / len(files), 2),
        "files": files,
        "words": words,
        "bits": threshold.bits,
    }


def review_figures(images: list[Image.Image], files: list[bytes]) -> dict[str, Any]:
    """The copies and their originals as the least certain images of a ledger: how many of
    one group reach the first screen of the review queue."""
    from contract.records import Classified, SeenFile
    from contract.settings import Settings
    from db import browse, migrate
    from db.batch_write import save_results
    from db.engine import make_engine, make_sessionmaker, transaction
    from db.ledger import record_files
    from db.versions import ensure_base_model
    from imaging.perceptual import file_phash
    from pipeline import near_duplicates

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        s = Settings(data_dir=root / "data", inbox=root / "inbox", redis_url=None)
        s.inbox.mkdir(parents=True)
        migrate.upgrade(s.db_url)
        sessions = make_sessionmaker(make_engine(s.db_url))
        seen, results = [], []
        for i, data in enumerate(files):
            path = s.inbox / f"{i:04d}.img"
            path.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            seen.append(SeenFile(str(path), sha, len(data), path.stat().st_mtime_ns))
            # Originals with copies and the copies first (the least certain), the rest after.
            confidence = (
                0.5 + (i % 200 if i < 200 else i - 200) / 1000 + (0.3 if 50 <= i < 200 else 0)
            )
            topk = [
                {"label": "a", "confidence": confidence},
                {"label": "b", "confidence": 1 - confidence},
            ]
            results.append(
                Classified(sha, "a", confidence, topk, phash=file_phash(data, 10**9))  # type: ignore[arg-type]
            )
        with transaction(sessions) as session:
            record_files(session, seen)
            base = ensure_base_model(session, "resnet18", "none", ["a", "b"])
            save_results(session, base.id, results)
        started = time.perf_counter()
        near_duplicates.refresh(s, sessions)
        grouping = time.perf_counter() - started
        with transaction(sessions) as session:
            first = [r.sha256 for r in browse.review_page(session, None, 20).items]
        pair_of = {seen[200 + k].sha256: k for k in range(50)} | {
            seen[k].sha256: k for k in range(50)
        }
        per_group: dict[int, int] = {}
        for sha in first:
            if sha in pair_of:
                per_group[pair_of[sha]] = per_group.get(pair_of[sha], 0) + 1
    return {
        "first_screen": len(first),
        "most_of_one_picture": max(per_group.values(), default=0),
        "pass_seconds_250": round(grouping, 2),
    }


def grouping_seconds() -> dict[str, float]:
    from imaging.perceptual import near_pairs

    out = {}
    rng = np.random.default_rng(0)
    for count in (5_000, 10_000, 20_000):
        words = rng.integers(0, 2**63, size=(count, 4), dtype=np.int64).view(np.uint64)
        started = time.perf_counter()
        near_pairs(words, 60)
        out[str(count)] = round(time.perf_counter() - started, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="the training budget")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d")}
    for name, images in collections().items():
        found = near_duplicate_figures(images)
        if name == "photos":
            figures["review"] = review_figures(images, found["files"])
        figures[f"near_duplicates:{name}"] = {
            k: v for k, v in found.items() if k not in ("files", "words", "bits")
        }
        print(name, json.dumps(figures[f"near_duplicates:{name}"]), flush=True)
    print("review", json.dumps(figures.get("review")), flush=True)
    figures["grouping_seconds"] = grouping_seconds()
    print("grouping", json.dumps(figures["grouping_seconds"]), flush=True)
    if not args.skip_training:
        figures["suspects"] = suspects_figures(args.minutes)
        print("suspects", json.dumps(figures["suspects"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"mistakes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
