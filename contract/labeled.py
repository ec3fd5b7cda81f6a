"""The training data's layout, which people, the web app and the trainer all write or read:
``labeled/<class>/**/<image>`` (torchvision's ImageFolder), with an optional
``labeled/_val/<class>/`` validation set. A class name becomes a folder name, so it is
validated like one. :func:`list_labeled` is the one reader of the folders: training, the web
app's class counts and the CLI see the same images (symlinked class folders followed, hidden
ones and hidden files skipped)."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from contract.paths import shown as shown_path

VAL_DIR = "_val"
MAX_CLASS_NAME = 100  # characters
MAX_CLASS_BYTES = 255  # a folder name's limit on Linux file systems, in UTF-8 bytes
#: Characters that look like a path separator: a class named with one would read as a path.
LOOKALIKE_SEPARATORS = frozenset("\u2044\u2215\u29f8\uff0f\u29f5\u2216\ufe68\uff3c")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def class_name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe class (folder) name, or None when it is."""
    if not name or name in {".", ".."}:
        return "empty or a relative path"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if "\x00" in name:
        return "contains a NUL byte"
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs"} for ch in name):
        return "contains control, invisible or undecodable characters"
    if name.startswith("."):
        return "starts with '.'"
    if name != name.strip():
        return "starts or ends with whitespace"
    if len(name) > MAX_CLASS_NAME:
        return f"longer than {MAX_CLASS_NAME} characters"
    if len(name.encode("utf-8")) > MAX_CLASS_BYTES:
        return f"longer than {MAX_CLASS_BYTES} bytes in UTF-8 (a folder name's limit)"
    return None


def normalized_label(name: str) -> str:
    """A label as a person means it: Unicode NFC, so "é" typed as one character or as "e" and
    an accent is one class."""
    return unicodedata.normalize("NFC", name)


def label_problem(name: str) -> str | None:
    """Why ``name`` cannot be given as a label (a class folder the user makes), or None."""
    if name == VAL_DIR:
        return f"'{VAL_DIR}' is reserved for the validation folder"
    if any(ch in LOOKALIKE_SEPARATORS for ch in name):
        return "contains a character that looks like a path separator"
    return class_name_problem(name)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


@dataclass(frozen=True, slots=True)
class ListedFile:
    path: Path
    rel: str  # relative to the labeled root, '/'-separated
    class_name: str
    is_val: bool
    size: int
    mtime_ns: int


@dataclass
class Listing:
    root: Path
    files: list[ListedFile]
    class_dirs: list[str]  # every candidate class folder, safe or not, sorted
    val_dirs: list[str]  # class folders under _val/
    has_val_dir: bool
    loose_files: int  # images directly in labeled/, outside any class folder


def _walk_images(class_dir: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(f))
    return found


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def list_labeled(root: Path) -> Listing:
    """Every candidate image under ``root`` with its size and mtime (``stat`` only); an empty
    listing where there is no such folder."""
    if not root.is_dir():
        return Listing(root, [], [], [], False, 0)
    class_dirs = [d for d in _subdirs(root) if d != VAL_DIR]
    val_root = root / VAL_DIR
    has_val = val_root.is_dir()
    val_dirs = _subdirs(val_root) if has_val else []
    files: list[ListedFile] = []
    for folder, names, is_val in ((root, class_dirs, False), (val_root, val_dirs, True)):
        for name in names:
            for path in _walk_images(folder / name):
                try:
                    st = path.stat()
                except OSError:  # vanished or a dangling link: not part of the data
                    continue
                # As text any report can hold, whatever bytes the name is (contract.paths).
                rel = shown_path(path.relative_to(root).as_posix())
                files.append(ListedFile(path, rel, name, is_val, st.st_size, st.st_mtime_ns))
    with os.scandir(root) as entries:
        loose = sum(1 for e in entries if e.is_file() and is_image_name(e.name))
    return Listing(root, files, class_dirs, val_dirs, has_val, loose)


def manifest_sha256(listing: Listing) -> str:
    """Hash of (path, size, mtime) of every labeled image: changes when the data may have."""
    digest = hashlib.sha256()
    for f in sorted(listing.files, key=lambda f: f.rel):
        digest.update(os.fsencode(f.rel) + b"\0")
        digest.update(f"{f.size}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class LabeledSeen:
    """One labeled image as a training run saw it (``db.models.LabeledImage``): where it is
    under labeled/, its label and split, its perceptual hash, and how much a model that did
    not train on it doubts the label: ``score`` in [0, 1] (1 - the probability it gives the
    label; higher is more suspect) and the class it ``suggested``."""

    sha256: str
    path: str
    label: str
    split: str  # train | val | holdout
    phash: bytes | None
    suggested: str | None = None
    given_probability: float | None = None
    score: float | None = None
