"""The classes a person can label with: the folders of labeled/ (with how many images each
holds), the active model's head, and the labels people gave. A label outside them makes a new
class, so it needs saying so (``new_class``): a typo ("Cats" for "cat") would otherwise become
a class of its own without a word. The web app and ``inbox-classifier label`` both ask here."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from contract.labeled import VAL_DIR, class_name_problem, is_image_name
from contract.settings import Settings
from db import labels, versions
from db.engine import transaction


@dataclass(frozen=True, slots=True)
class KnownClass:
    name: str
    labeled_images: int  # image files under labeled/<name>/ (and labeled/_val/<name>/)
    in_model: bool  # the active model's head has it


def known_classes(settings: Settings, sessions: sessionmaker[Session]) -> list[KnownClass]:
    """Every known class, the most labeled first (the review keys go to the first nine), then
    the rest by name."""
    with transaction(sessions) as session:
        model_classes = _model_classes(session)
        labeled_by_people = set(labels.human_classes(session))
    counts = count_labeled(settings.labeled_path)
    names = set(counts) | model_classes | labeled_by_people
    found = [KnownClass(n, counts.get(n, 0), n in model_classes) for n in names]
    return sorted(found, key=lambda c: (-c.labeled_images, c.name.casefold(), c.name))


def known_class_names(settings: Settings, session: Session) -> set[str]:
    """The names alone (no counting): what a label is checked against."""
    return (
        set(class_folders(settings.labeled_path))
        | _model_classes(session)
        | set(labels.human_classes(session))
    )


def _model_classes(session: Session) -> set[str]:
    active = versions.active_model(session)
    return {str(c) for c in active.classes} if active is not None else set()


def class_folders(root: Path) -> list[str]:
    """The class folders of labeled/ (and of its validation folder)."""
    names: list[str] = []
    for base in (root, root / VAL_DIR):
        try:
            names += [
                e.name
                for e in os.scandir(base)
                if e.is_dir(follow_symlinks=False)
                and e.name != VAL_DIR
                and class_name_problem(e.name) is None
            ]
        except OSError:  # no labeled/ yet
            continue
    return names


def count_labeled(root: Path) -> dict[str, int]:
    """Image files per class folder of ``root`` (the validation folder's counted in)."""
    counts: dict[str, int] = {}
    for base in (root, root / VAL_DIR):
        try:
            entries = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except OSError:  # no labeled/ yet
            continue
        for entry in entries:
            if entry.name == VAL_DIR or class_name_problem(entry.name) is not None:
                continue
            counts[entry.name] = counts.get(entry.name, 0) + _images_under(entry.path)
    return counts


def _images_under(folder: str) -> int:
    return sum(1 for _, _, files in os.walk(folder) for name in files if is_image_name(name))


def new_class_problem(label: str, known: set[str]) -> str | None:
    """Why ``label`` needs confirming as a new class (None: it is a known one), naming the
    known classes it is close to."""
    if label in known or not known:  # the very first label makes the first class
        return None
    names = sorted(known)
    close = close_matches(label, names)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{label!r} is not a known class ({len(names)} known){hint}"


def close_matches(label: str, names: list[str], limit: int = 3) -> list[str]:
    """Known classes ``label`` may be a slip for: the same but for case, or similar spelling."""
    folded = label.casefold()
    same = [n for n in names if n.casefold() == folded and n != label]
    by_folded = {n.casefold(): n for n in names}
    similar = [
        by_folded[m] for m in difflib.get_close_matches(folded, list(by_folded), limit, 0.75)
    ]
    return list(dict.fromkeys(same + similar))[:limit]
