"""A person's label: stored in the ledger (the truth from then on) and written into the training
data as ``labeled/<class>/<sha256>.<ext>``, so the next retrain learns from it; the label that
completes ``RETRAIN_AFTER_LABELS`` queues that retrain. The web app and ``inbox-classifier
label`` both come here, so labeling works the same from a page, the API and a terminal.

The training copy is a hard link to the inbox file where the file system allows (no second
copy of the bytes), else a copy; either way it is written under a temporary name, renamed into
place and checked to hold the labeled bytes. Undoing a label removes its copy, and the class
folder with it once it is empty. One label is one read and one write transaction (the label
and, at the threshold, the queued run), then the run's message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from contract.failures import Unusable
from contract.files import FileGone, FileRefused
from contract.labeled import label_problem, normalized_label
from contract.messages import RetrainRequest, Trigger
from contract.settings import Settings
from db import labels, runs
from db.engine import transaction
from db.models import ImageStatus
from imaging.formats import sniff
from objectstore.inbox import read_image, store_for
from objectstore.labeled import copy_label, drop_label
from objectstore.store import StoreUnavailable
from pipeline import retrain
from pipeline.classes import known_class_names, new_class_problem
from pipeline.errors import Problem, UseCaseError
from pipeline.training_copies import follow_ledger, image_lock, place, remove

log = logging.getLogger(__name__)


class LabelError(UseCaseError):
    def __init__(self, problem: Problem, message: str, *, new_class: bool = False) -> None:
        super().__init__(problem, message)
        self.new_class = new_class  # confirming the label as a new class would take it


@dataclass(frozen=True, slots=True)
class Labeled:
    sha256: str
    label: str | None  # None: the label was undone
    file: Path | None  # the training copy
    retrain_run: int | None = None  # the run this label queued (RETRAIN_AFTER_LABELS)


def apply_label(
    settings: Settings,
    sessions: sessionmaker[Session],
    sha256: str,
    label: str,
    reviewer: str | None = None,
    broker: Callable[[], Celery] | None = None,
    *,
    new_class: bool = False,
) -> Labeled:
    """Give image ``sha256`` the human label ``label`` (NFC-normalised). A label that is no
    known class is refused unless ``new_class`` says it is meant to start one. With
    ``broker``, the label that completes ``RETRAIN_AFTER_LABELS`` sends a retrain (without one,
    or when it is unreachable, the label still counts and the run row says why it was not
    sent). Raises :class:`LabelError`."""
    label = normalized_label(label)
    problem = label_problem(label)
    if problem is not None:
        raise LabelError(Problem.INVALID, f"{label!r} cannot be a class name: {problem}")
    with image_lock(settings.labeled_path, sha256):
        labeled, run_id = _label_locked(settings, sessions, sha256, label, reviewer, new_class)
    if run_id is not None:
        _send_labels_run(sessions, broker, run_id, settings.retrain_after_labels)
    return labeled


def _label_locked(
    settings: Settings,
    sessions: sessionmaker[Session],
    sha256: str,
    label: str,
    reviewer: str | None,
    new_class: bool,
) -> tuple[Labeled, int | None]:
    """:func:`apply_label`'s reads and writes, holding the image's lock."""
    with transaction(sessions) as session:
        image = labels.target(session, sha256)
        unknown = (
            None if new_class else new_class_problem(label, known_class_names(settings, session))
        )
    if image is None:
        raise LabelError(Problem.NOT_FOUND, f"no image with content hash {sha256}")
    if unknown is not None:
        raise LabelError(Problem.INVALID, unknown, new_class=True)
    if image.status == ImageStatus.FAILED:
        raise LabelError(
            Problem.INVALID,
            "this image failed (it could not be decoded), so it cannot be a training example",
        )
    try:
        found = read_image(settings, image.paths, sha256)
    except (FileGone, FileRefused) as exc:
        raise LabelError(Problem.CONFLICT, f"cannot be used for training: {exc}") from None
    kind = sniff(found.data)
    if kind is None:
        raise LabelError(
            Problem.CONFLICT, "cannot be used for training: not an image format it can learn from"
        )
    target = settings.labeled_path / label / f"{sha256}{kind.extension}"
    created = not target.exists()
    if created:
        place(found.path, found.data, target)
    try:
        with transaction(sessions) as session:
            labels.set_label(session, image, label, file=str(target), reviewer=reviewer)
            run_id = retrain.queue_if_enough_labels(session, settings.retrain_after_labels)
    except BaseException:
        if created:
            remove(target, settings.labeled_path)
        raise
    follow_ledger(settings.labeled_path, sha256, keep=target)
    _follow_in_bucket(settings, sha256, image.human_label, (found.path, label, kind.extension))
    return Labeled(sha256, label, target, run_id), run_id


def remove_label(settings: Settings, sessions: sessionmaker[Session], sha256: str) -> Labeled:
    """Undo the image's human label: it goes back to the review queue and its training copy
    is removed. Raises :class:`LabelError` when there is no such image or label."""
    with image_lock(settings.labeled_path, sha256):
        with transaction(sessions) as session:
            image = labels.target(session, sha256)
            if image is None:
                raise LabelError(Problem.NOT_FOUND, f"no image with content hash {sha256}")
            if image.human_label is None:
                raise LabelError(Problem.NOT_FOUND, "this image has no human label to undo")
            labels.clear_label(session, image)
        follow_ledger(settings.labeled_path, sha256, keep=None)
        _follow_in_bucket(settings, sha256, image.human_label, None)
    return Labeled(sha256, None, None)


def _follow_in_bucket(
    settings: Settings, sha256: str, before: str | None, now: tuple[str, str, str] | None
) -> None:
    """With the inbox in a bucket, the bucket's ``labeled/`` follows the ledger too
    (:mod:`objectstore.labeled`): the copy under the class it had goes, a server-side copy
    under the new one (``now``: source path, label, extension) comes. The store being away
    costs the bucket's copy (the trainer of another host misses it), never the label."""
    store = store_for(settings)
    if store is None:
        return
    try:
        if before is not None and (now is None or now[1] != before):
            drop_label(store, before, sha256)
        if now is not None:
            source, label, extension = now
            key = store.location.key_of(source)
            if key is not None:
                copy_label(store, key, label, sha256, extension)
    except (StoreUnavailable, Unusable) as exc:
        log.warning("the bucket's labeled/ copy of %s did not follow its label: %s", sha256, exc)


def _send_labels_run(
    sessions: sessionmaker[Session],
    broker: Callable[[], Celery] | None,
    run_id: int,
    threshold: int,
) -> None:
    request = RetrainRequest(Trigger.LABELS, run_id=run_id)
    try:
        if broker is None:
            raise RuntimeError("no broker: `inbox-classifier up` is not running")
        retrain.send(sessions, broker(), request)
    except Exception as exc:  # the label stands; the run row says why no run came of it
        if not isinstance(exc, retrain.NotSent):
            with transaction(sessions) as session:
                runs.fail(session, run_id, f"could not send the request: {exc}")
        log.error("%d new labels, but the retrain request failed: %s", threshold, exc)
        return
    log.info("%d new human labels: training run %d queued", threshold, run_id)
