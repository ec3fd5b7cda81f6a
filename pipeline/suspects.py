"""Suspect labels, decided by a person: keep the label, relabel the image, or take it out of
training; each decision undone by the same key. The web app's Suspects page, its API and
``inbox-classifier suspects`` all come here.

A suspect is a file under ``labeled/<class>/``. Where it is a label's training copy (the
ledger labeled it: ``<sha256>.<ext>``), the decision goes through the label use case
(:mod:`pipeline.labels`): a relabel is a new label, a removal undoes the label, and both are
in the image's label history. Any other file is a person's own: a relabel moves it to the
other class folder and a removal moves it to ``<data_dir>/removed/<class>/``, never deleting
it; undo moves it back. Either way the next training run sees the change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from contract.labeled import label_problem, normalized_label
from contract.settings import Settings
from db import labels
from db import suspects as store
from db.engine import transaction
from pipeline import labels as labeling
from pipeline.classes import known_class_names
from pipeline.errors import Problem, UseCaseError
from pipeline.training_copies import COPY_NAME, image_lock

REMOVED_DIR = "removed"


class Decision(StrEnum):
    KEEP = "kept"
    RELABEL = "relabeled"
    REMOVE = "removed"


class SuspectError(UseCaseError):
    pass


@dataclass(frozen=True, slots=True)
class Decided:
    sha256: str
    decision: str  # kept | relabeled | removed | undone
    label: str  # the label it was given
    new_label: str | None
    path: str | None  # where its file is now, under labeled/ (None: out of training)


def list_suspects(
    sessions: sessionmaker[Session], limit: int, offset: int = 0
) -> list[store.Suspect]:
    with transaction(sessions) as session:
        return store.suspects(session, limit, offset)


def decide(
    settings: Settings,
    sessions: sessionmaker[Session],
    sha256: str,
    decision: Decision,
    new_label: str | None = None,
    reviewer: str | None = None,
    broker: Callable[[], Celery] | None = None,
) -> Decided:
    """Apply a person's ``decision`` on suspect ``sha256``. Raises :class:`SuspectError` (or
    :class:`pipeline.labels.LabelError` for a relabel the label rules refuse)."""
    with transaction(sessions) as session:
        found = store.suspect(session, sha256)
        if found is None:
            raise SuspectError(Problem.NOT_FOUND, f"no suspect label with content hash {sha256}")
        if store.last_decision(session, sha256) is not None:
            raise SuspectError(
                Problem.CONFLICT, "already decided; undo that decision first to change it"
            )
        ledger_copy = _is_ledger_copy(session, found)
        known = known_class_names(settings, session)
    if decision is Decision.KEEP:
        return _record(sessions, found, Decision.KEEP, None, found.path, found.path, reviewer)
    if decision is Decision.RELABEL:
        target = _checked_label(new_label, found.label, known)
        if ledger_copy:
            labeled = labeling.apply_label(settings, sessions, sha256, target, reviewer, broker)
            moved_to = _relative(settings, labeled.file)
            return _record(sessions, found, decision, target, found.path, moved_to, reviewer)
        with image_lock(settings.labeled_path, sha256):
            moved = _move(_labeled_file(settings, found.path), settings.labeled_path / target)
        moved_to = _relative(settings, moved)
        return _record(sessions, found, decision, target, found.path, moved_to, reviewer)
    if ledger_copy:
        labeling.remove_label(settings, sessions, sha256)
        return _record(sessions, found, decision, None, found.path, None, reviewer)
    with image_lock(settings.labeled_path, sha256):
        moved = _move(
            _labeled_file(settings, found.path), settings.data_dir / REMOVED_DIR / found.label
        )
    return _record(
        sessions,
        found,
        decision,
        None,
        found.path,
        str(moved.relative_to(settings.data_dir)),
        reviewer,
    )


def undo(
    settings: Settings,
    sessions: sessionmaker[Session],
    sha256: str,
    broker: Callable[[], Celery] | None = None,
) -> Decided:
    """Undo the image's current decision: the label kept or given back, its file where it
    was. Raises :class:`SuspectError`."""
    with transaction(sessions) as session:
        last = store.last_decision(session, sha256)
        if last is None:
            raise SuspectError(Problem.NOT_FOUND, "no decision on this image to undo")
        ledger_copy = (
            COPY_NAME.match(Path(last.moved_from or "").name) is not None
            and labels.target(session, sha256) is not None
        )
    if last.decision != Decision.KEEP:
        if ledger_copy:
            labeling.apply_label(settings, sessions, sha256, last.label, broker=broker)
        elif last.moved_to is not None and last.moved_from is not None:
            base = settings.labeled_path if last.decision == Decision.RELABEL else settings.data_dir
            with image_lock(settings.labeled_path, sha256):
                _move_back(base / last.moved_to, _labeled_file(settings, last.moved_from))
    with transaction(sessions) as session:
        store.undo_decision(session, last.id)
    return Decided(sha256, "undone", last.label, None, last.moved_from)


def labeled_bytes(settings: Settings, found: store.Suspect, max_bytes: int) -> bytes:
    """The suspect's file's bytes, where the run saw it, checked to be the same content.
    Raises :class:`SuspectError` when it is gone, changed or too large."""
    path = _labeled_file(settings, found.path)
    try:
        if path.stat().st_size > max_bytes:
            raise SuspectError(Problem.CONFLICT, f"{path} is over {max_bytes:,} bytes")
        data = path.read_bytes()
    except OSError:
        raise SuspectError(
            Problem.CONFLICT, f"{found.path} is no longer in {settings.labeled_path}"
        ) from None
    if hashlib.sha256(data).hexdigest() != found.sha256:
        raise SuspectError(Problem.CONFLICT, f"{found.path} changed since the run saw it")
    return data


# --- helpers --------------------------------------------------------------------------------


def _is_ledger_copy(session: Session, found: store.Suspect) -> bool:
    """Whether the suspect's file is a label's training copy (the ledger labeled it)."""
    if COPY_NAME.match(Path(found.path).name) is None:
        return False
    image = labels.target(session, found.sha256)
    return image is not None and image.human_label == found.label


def _checked_label(new_label: str | None, given: str, known: set[str]) -> str:
    if not new_label:
        raise SuspectError(Problem.INVALID, "a relabel needs the new class (new_label)")
    label = normalized_label(new_label)
    problem = label_problem(label)
    if problem is not None:
        raise SuspectError(Problem.INVALID, f"{label!r} cannot be a class name: {problem}")
    if label == given:
        raise SuspectError(Problem.INVALID, f"it is labeled {given!r} already: keep it instead")
    if label not in known:
        raise SuspectError(
            Problem.INVALID,
            f"{label!r} is not a known class; known: {', '.join(sorted(known)[:12])}",
        )
    return label


def _labeled_file(settings: Settings, rel: str) -> Path:
    """``labeled/<rel>``, refused where it would leave the labeled folder."""
    root = settings.labeled_path
    path = root / rel
    if ".." in Path(rel).parts or Path(rel).is_absolute():
        raise SuspectError(Problem.INVALID, f"{rel!r} is not a path under {root}")
    return path


def _move(source: Path, folder: Path) -> Path:
    """Move ``source`` into ``folder`` under its own name (``name-2.ext`` and so on where that
    is taken), never over another file. Returns where it went."""
    if not source.is_file():
        raise SuspectError(
            Problem.CONFLICT, f"{source} is no longer there (moved or deleted since the run)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    number = 1
    while target.exists():
        number += 1
        target = folder / f"{source.stem}-{number}{source.suffix}"
    _rename(source, target)
    return target


def _move_back(source: Path, target: Path) -> None:
    if not source.is_file():
        raise SuspectError(Problem.CONFLICT, f"{source} is no longer there: nothing to move back")
    if target.exists():
        raise SuspectError(Problem.CONFLICT, f"{target} exists again: move it away first")
    target.parent.mkdir(parents=True, exist_ok=True)
    _rename(source, target)


def _rename(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: labeled/ and the data dir on different file systems
            raise
        shutil.move(source, target)


def _relative(settings: Settings, path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return str(path.relative_to(settings.labeled_path))
    except ValueError:
        return str(path)


def _record(
    sessions: sessionmaker[Session],
    found: store.Suspect,
    decision: Decision,
    new_label: str | None,
    moved_from: str | None,
    moved_to: str | None,
    reviewer: str | None,
) -> Decided:
    with transaction(sessions) as session:
        store.record_decision(
            session,
            found.sha256,
            found.label,
            decision.value,
            new_label=new_label,
            moved_from=moved_from,
            moved_to=moved_to,
            reviewer=reviewer,
        )
    now_at = None if decision is Decision.REMOVE else moved_to
    return Decided(found.sha256, decision.value, found.label, new_label, now_at)
