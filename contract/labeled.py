"""The training data's layout, which people, the web app and the trainer all write or read:
``labeled/<class>/**/<image>`` (torchvision's ImageFolder), with an optional
``labeled/_val/<class>/`` validation set. A class name becomes a folder name, so it is
validated like one."""

from __future__ import annotations

import os
import unicodedata

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
