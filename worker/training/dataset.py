"""Labeled data in torchvision's ImageFolder layout: ``labeled/<class>/**/<image>``.

Three steps, cheapest first:

* :func:`list_labeled` walks the folder with ``stat`` only; :func:`manifest_sha256` hashes the
  listing (paths, sizes, mtimes), so an unchanged folder is recognised without reading a file.
* :func:`scan_labeled` reads every image once: content hash (for the split) and a decode check
  (corrupt files are skipped and counted), then refuses data that cannot train a model.
* The split is by content hash: an image never moves between train and validation across
  runs. ``labeled/_val/<class>/`` is used as the validation set instead when it exists.
"""

from __future__ import annotations

import hashlib
import io
import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage

from contract.labeled import (
    VAL_DIR,
    ListedFile,
    Listing,
    class_name_problem,
    manifest_sha256,
)
from contract.labeled import list_labeled as read_listing
from imaging.decode import BadImage, decode
from imaging.perceptual import hash_side, phash
from worker.training.detail import ContentSize, content_size

log = logging.getLogger(__name__)


class TrainingRefused(Exception):
    """The labeled data cannot train a model; the message says what to fix."""


def list_labeled(root: Path) -> Listing:
    """Every candidate image under ``root`` (contract.labeled.list_labeled), or
    :class:`TrainingRefused` when there is no labeled folder at all."""
    if not root.is_dir():
        raise TrainingRefused(
            f"no labeled folder at {root}: create {root}/<class>/ folders with example images "
            "(or set --labeled-dir)"
        )
    return read_listing(root)


# --- the scan and the split ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    rel: str
    label: int
    sha256: str


@dataclass
class LabeledSet:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]  # picks the best epoch, calibrates
    holdout: list[Sample]  # never trained on nor used to pick: versions are compared on it
    manifest_sha256: str
    explicit_val: bool
    corrupt: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    warnings: list[str] = field(default_factory=list)
    typical_shorter_side: int = 0  # the median shorter side of the usable images, in pixels
    content: ContentSize | None = None  # the detail they carry (worker.training.detail)
    hashes: dict[str, bytes] = field(default_factory=dict)  # perceptual hashes, by sha256

    def images_per_class(self) -> dict[str, dict[str, int]]:
        train = Counter(s.label for s in self.train)
        val = Counter(s.label for s in self.val)
        held = Counter(s.label for s in self.holdout)
        return {
            c: {"train": train[i], "val": val[i], "holdout": held[i]}
            for i, c in enumerate(self.classes)
        }


def split_score(sha256: str) -> float:
    """A content hash as a number in [0, 1): the same image always gets the same score."""
    return int(sha256[:8], 16) / 2**32


@dataclass(frozen=True)
class _Checked:
    sha256: str | None  # None: corrupt or unreadable
    error: str | None
    shorter: int = 0  # the shorter side in pixels
    phash: bytes | None = None  # the perceptual hash (imaging.perceptual)


def _check(path: Path, max_pixels: int, min_side: int) -> _Checked:
    """Read, hash and decode-check one file; its perceptual hash from the same decode."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _Checked(None, f"unreadable: {exc.strerror or exc}")
    try:
        with decode(data, max_pixels, min_side=hash_side(min_side)) as image:
            perceptual = phash(image)
        with PILImage.open(io.BytesIO(data)) as header:  # decode() scaled JPEGs down
            shorter = min(header.size)
    except BadImage as exc:
        return _Checked(None, str(exc))
    return _Checked(hashlib.sha256(data).hexdigest(), None, shorter, perceptual)


CONTENT_SAMPLE = 64  # images the detail estimate looks at


def _measure_content(samples: list[Sample]) -> ContentSize | None:
    """The detail a sample of the images carries (by content hash: the same sample each run)."""
    chosen = sorted(samples, key=lambda s: s.sha256)[:CONTENT_SAMPLE]
    images = []
    for sample in chosen:
        try:
            with PILImage.open(sample.path) as image:
                image.load()
                images.append(image.copy())
        except (OSError, ValueError):
            continue
    return content_size(images) if images else None


def _resolve_conflicts(
    usable: dict[tuple[str, bool], dict[str, ListedFile]],
    classes: list[str],
    conflicting: set[str],
    human_labels: Callable[[Collection[str]], Mapping[str, str | None]] | None,
    note: Callable[[str], None],
) -> None:
    """Keep each image that sits in several class folders in the class its human label names
    only; drop it from all of them where nothing says which."""
    truth = human_labels(conflicting) if human_labels is not None else {}
    settled = dropped = 0
    for sha in conflicting:
        label = truth.get(sha)
        for c in classes:
            if c != label:
                usable[(c, False)].pop(sha, None)
        if label in classes:
            settled += 1
        else:
            dropped += 1
    if settled:
        note(f"{settled} image(s) in more than one class folder: trained as their label says")
    if dropped:
        note(
            f"{dropped} image(s) in more than one class folder with no label saying which: "
            "left out of training (keep one copy, or label them)"
        )


def scan_labeled(
    root: Path,
    *,
    val_fraction: float,
    min_images_per_class: int,
    holdout_fraction: float = 0.0,
    max_pixels: int,
    min_side: int = 256,
    threads: int = 2,
    listing: Listing | None = None,
    warn: Callable[[str], None] | None = None,
    human_labels: Callable[[Collection[str]], Mapping[str, str | None]] | None = None,
) -> LabeledSet:
    """Read, hash and decode-check every labeled image; split; refuse unusable data. Warnings
    (corrupt files, empty class folders...) go to ``warn``, or to the log without one.

    An image in two class folders trains in the one its human label names (``human_labels``:
    the ledger's, by content hash) and in none when nothing says which: trained on both, it
    teaches the model to doubt both.

    Raises :class:`TrainingRefused` for unsafe class names, fewer than two classes, or a class
    with fewer than ``min_images_per_class`` usable images.
    """
    listing = listing or list_labeled(root)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)
        else:
            log.warning("%s", message)

    _refuse_unsafe_names(root, listing, note)
    found = _read_all(listing, max_pixels, min_side, threads, note)
    classes = _classes_with_images(root, listing, found.files_per_class, note)
    conflicting = _in_several_classes(found.usable, classes)
    if conflicting:
        _resolve_conflicts(found.usable, classes, conflicting, human_labels, note)
    train, val, holdout = _split(
        found.usable, classes, listing.has_val_dir, val_fraction, holdout_fraction
    )
    labeled = LabeledSet(
        root=root,
        classes=classes,
        train=train,
        val=val,
        holdout=holdout,
        manifest_sha256=manifest_sha256(listing),
        explicit_val=listing.has_val_dir,
        corrupt=found.corrupt,
        warnings=warnings,
        typical_shorter_side=(
            int(statistics.median(found.shorter_sides)) if found.shorter_sides else 0
        ),
        content=_measure_content(train + val),
        hashes=found.hashes,
    )
    _refuse_too_few(labeled, min_images_per_class, note)
    return labeled


@dataclass
class _Read:
    """Every listed file read once: the usable ones by (class, validation folder) and hash."""

    usable: dict[tuple[str, bool], dict[str, ListedFile]]
    corrupt: list[dict[str, str]]  # {"path", "error"}
    files_per_class: Counter[str]
    shorter_sides: list[int]
    hashes: dict[str, bytes] = field(default_factory=dict)  # perceptual, by content hash


def _refuse_unsafe_names(root: Path, listing: Listing, note: Callable[[str], None]) -> None:
    bad_names = {
        n: p
        for n in listing.class_dirs + listing.val_dirs
        if (p := class_name_problem(n)) is not None
    }
    if bad_names:
        listed = "; ".join(f"{n!r}: {p}" for n, p in sorted(bad_names.items()))
        raise TrainingRefused(f"unsafe class folder name(s) in {root}: {listed}. Rename them.")
    if listing.loose_files:
        note(
            f"{listing.loose_files} image(s) directly in {root} ignored: put them in a class folder"
        )


def _read_all(
    listing: Listing, max_pixels: int, min_side: int, threads: int, note: Callable[[str], None]
) -> _Read:
    """Read, hash and decode-check every file once, on ``threads`` threads."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        checks = list(pool.map(lambda f: _check(f.path, max_pixels, min_side), listing.files))
    found = _Read(defaultdict(dict), [], Counter(), [])
    duplicates = 0
    for f, checked in zip(listing.files, checks, strict=True):
        sha = checked.sha256
        if not f.is_val:
            found.files_per_class[f.class_name] += 1
        if sha is None:
            found.corrupt.append({"path": f.rel, "error": checked.error or "unusable"})
            continue
        found.shorter_sides.append(checked.shorter)
        if checked.phash is not None:
            found.hashes[sha] = checked.phash
        bucket = found.usable[(f.class_name, f.is_val)]
        if sha in bucket:
            duplicates += 1
        else:
            bucket[sha] = f
    if found.corrupt:
        first = found.corrupt[0]
        note(
            f"{len(found.corrupt)} corrupt or unreadable image(s) skipped, e.g. "
            f"{first['path']}: {first['error']}"
        )
    if duplicates:
        note(f"{duplicates} duplicate image(s) (same content in one class) counted once")
    return found


def _classes_with_images(
    root: Path, listing: Listing, files_per_class: Counter[str], note: Callable[[str], None]
) -> list[str]:
    classes = [name for name in listing.class_dirs if files_per_class[name]]
    empty = [name for name in listing.class_dirs if not files_per_class[name]]
    if empty:  # one line per run, however many: an undone label can leave many behind
        shown = ", ".join(repr(n) for n in empty[:5]) + (" ..." if len(empty) > 5 else "")
        note(f"{len(empty)} class folder(s) without images ignored: {shown}")
    if len(classes) < 2:
        raise TrainingRefused(
            f"need at least 2 classes with images in {root}, found {len(classes)}"
            + (f" ({classes[0]!r})" if classes else "")
            + ": add a folder per class, e.g. labeled/cat/ and labeled/dog/"
        )
    unmatched = [name for name in listing.val_dirs if name not in classes]
    if unmatched:
        shown = ", ".join(repr(n) for n in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        note(f"{len(unmatched)} {VAL_DIR}/ folder(s) without a training class ignored: {shown}")
    return classes


def _in_several_classes(
    usable: dict[tuple[str, bool], dict[str, ListedFile]], classes: list[str]
) -> set[str]:
    counted: Counter[str] = Counter(sha for c in classes for sha in usable[(c, False)])
    return {sha for sha, n in counted.items() if n > 1}


def _split(
    usable: dict[tuple[str, bool], dict[str, ListedFile]],
    classes: list[str],
    explicit_val: bool,
    val_fraction: float,
    holdout_fraction: float,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Train, validation and held-out images, by content hash (see the module)."""
    index = {c: i for i, c in enumerate(classes)}
    train: list[Sample] = []
    val: list[Sample] = []
    # The held-out set: by content hash alone, so an image stays in it (or out of it) however
    # the labeled folders grow, and it grows as labels arrive.
    holdout = [
        Sample(f.path, f.rel, index[c], sha)
        for c in classes
        for sha, f in usable[(c, False)].items()
        if split_score(sha) < holdout_fraction
    ]
    held = {s.sha256 for s in holdout}
    if explicit_val:
        val_shas = {sha for c in classes for sha in usable[(c, True)]}
        for c in classes:
            val += [Sample(f.path, f.rel, index[c], sha) for sha, f in usable[(c, True)].items()]
            train += [
                Sample(f.path, f.rel, index[c], sha)
                for sha, f in usable[(c, False)].items()
                if sha not in val_shas and sha not in held
            ]
    else:
        upper = holdout_fraction + val_fraction
        for c in classes:
            samples = [
                Sample(f.path, f.rel, index[c], sha)
                for sha, f in usable[(c, False)].items()
                if sha not in held
            ]
            cls_val = [s for s in samples if split_score(s.sha256) < upper]
            cls_train = [s for s in samples if split_score(s.sha256) >= upper]
            if not cls_val and len(cls_train) >= 2:  # every class gets a validation image
                pick = min(cls_train, key=lambda s: (split_score(s.sha256), s.sha256))
                cls_train.remove(pick)
                cls_val.append(pick)
            if not cls_train and len(cls_val) >= 2:  # ... and a training image
                pick = max(cls_val, key=lambda s: (split_score(s.sha256), s.sha256))
                cls_val.remove(pick)
                cls_train.append(pick)
            train += cls_train
            val += cls_val
    for part in (train, val, holdout):
        part.sort(key=lambda s: s.rel)
    return train, val, holdout


def _refuse_too_few(
    labeled: LabeledSet, min_images_per_class: int, note: Callable[[str], None]
) -> None:
    counts = labeled.images_per_class()
    short = {
        c: sum(n.values()) for c, n in counts.items() if sum(n.values()) < min_images_per_class
    }
    if short:
        listed = ", ".join(f"{c!r}: {n}" for c, n in sorted(short.items()))
        raise TrainingRefused(
            f"too few usable images (need at least {min_images_per_class} per class): {listed}"
        )
    empty_train = [c for c, n in counts.items() if n["train"] == 0]
    if empty_train:
        raise TrainingRefused(f"no training images left for class(es) {empty_train}")
    if not labeled.val:
        raise TrainingRefused("no validation images: add images (or labeled/_val/<class>/)")
    missing_val = [c for c, n in counts.items() if n["val"] == 0]
    if missing_val:
        note(f"class(es) {missing_val} have no validation image: their accuracy is unknown")
