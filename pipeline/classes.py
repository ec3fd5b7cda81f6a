"""The classes a person can label with: the folders of labeled/ (with how many images each
holds), the active model's head, and the labels people gave. A label outside them makes a new
class, so it needs saying so (``new_class``): a typo ("Cats" for "cat") would otherwise become
a class of its own without a word. The web app and ``inbox-classifier label`` both ask here."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from contract.labeled import class_name_problem, list_labeled
from contract.settings import Settings
from db import labels, versions
from db.engine import transaction


@dataclass(frozen=True, slots=True)
class KnownClass:
    name: str
    labeled_images: int  # image files under labeled/<name>/ (and labeled/_val/<name>/)
    in_model: bool  # the active model's head has it


def known_classes(settings: Settings, sessions: sessionmaker[Session]) -> list[KnownClass]:
    """Every known class in an order that does not change between visits (the review page's
    keys go to the first ten): the classes people labeled, in the order they first used them;
    then the other folders of labeled/, then the model's own classes, each by name."""
    with transaction(sessions) as session:
        model_classes = _model_classes(session)
        by_people = labels.human_classes(session)  # oldest first
    counts = count_labeled(settings.labeled_path)
    first_use = {name: i for i, name in enumerate(by_people)}
    names = set(counts) | model_classes | set(by_people)
    found = [KnownClass(n, counts.get(n, 0), n in model_classes) for n in names]

    def order(c: KnownClass) -> tuple[int, int, str, str]:
        group = 0 if c.name in first_use else 1 if c.labeled_images else 2
        return (group, first_use.get(c.name, 0), c.name.casefold(), c.name)

    return sorted(found, key=order)


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
    """The class folders of labeled/ (and of its validation folder), as training reads them."""
    listing = list_labeled(root)
    names = dict.fromkeys([*listing.class_dirs, *listing.val_dirs])
    return [n for n in names if class_name_problem(n) is None]


def count_labeled(root: Path) -> dict[str, int]:
    """Images per class folder of ``root`` (the validation folder's counted in): the images
    training sees (contract.labeled.list_labeled: the same reader)."""
    listing = list_labeled(root)
    counts = dict.fromkeys(class_folders(root), 0)
    for found in listing.files:
        if found.class_name in counts:
            counts[found.class_name] += 1
    return counts


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
