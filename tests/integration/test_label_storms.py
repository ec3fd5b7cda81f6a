"""One label per image, in the ledger and on disk, whatever the interleaving: concurrent labels,
relabels and undos of one image (threads of one web app, and separate processes) leave
labeled/ exactly as the ledger says; the repair pass at start mends what a crash left; training
never trains an image in two classes unless the ledger says which."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from db.engine import make_engine, make_sessionmaker, transaction
from db.models import Image
from pipeline.labels import LabelError, apply_label, remove_label
from pipeline.training_copies import repair
from tests.helpers.web import seed_images
from worker.training.dataset import scan_labeled


def _copies_on_disk(settings: Settings) -> dict[str, set[str]]:
    """sha256 -> the class folders holding a training copy of it."""
    found: dict[str, set[str]] = {}
    for path in settings.labeled_path.glob("*/*"):
        if path.parent.name.startswith("."):
            continue
        found.setdefault(path.stem, set()).add(path.parent.name)
    return found


def _ledger_labels(sessions: sessionmaker[Session]) -> dict[str, str | None]:
    with transaction(sessions) as session:
        return dict(session.execute(select(Image.sha256, Image.human_label)).all())


def _assert_disk_follows_ledger(settings: Settings, sessions: sessionmaker[Session]) -> None:
    ledger = _ledger_labels(sessions)
    disk = _copies_on_disk(settings)
    wrong = {
        sha: (label, disk.get(sha, set()))
        for sha, label in ledger.items()
        if disk.get(sha, set()) != ({label} if label else set())
    }
    assert not wrong, f"{len(wrong)} image(s) whose copies disagree with the ledger: {wrong}"


def _storm(actions: list[Callable[[], object]]) -> None:
    start = threading.Barrier(len(actions))

    def run(action: Callable[[], object]) -> None:
        start.wait()
        with contextlib.suppress(LabelError):  # an undo that found the label gone: fine
            action()

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_simultaneous_labels_and_undos_of_one_image_leave_one_copy_or_none(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    seeded = seed_images(settings, session_factory, [("cat", 0.5)] * 30)
    for item in seeded[:15]:  # label vs relabel, to two classes at once
        _storm(
            [
                lambda s=item.sha256: apply_label(settings, session_factory, s, "cat"),
                lambda s=item.sha256: apply_label(settings, session_factory, s, "dog"),
            ]
        )
    for item in seeded[15:]:  # label vs undo
        apply_label(settings, session_factory, item.sha256, "bird")
        _storm(
            [
                lambda s=item.sha256: apply_label(settings, session_factory, s, "fish"),
                lambda s=item.sha256: remove_label(settings, session_factory, s),
            ]
        )
    _assert_disk_follows_ledger(settings, session_factory)
    labels = _ledger_labels(session_factory)
    assert all(labels[i.sha256] in {"cat", "dog"} for i in seeded[:15])


def _label_in_a_process(settings_json: str, sha256: str, label: str | None, rounds: int) -> None:
    settings = Settings.model_validate_json(settings_json)
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    for _ in range(rounds):
        with contextlib.suppress(LabelError):
            if label is None:
                remove_label(settings, sessions, sha256)
            else:
                apply_label(settings, sessions, sha256, label)
    engine.dispose()


def test_processes_that_label_one_image_at_once_agree_with_the_ledger(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    (item,) = seed_images(settings, session_factory, [("cat", 0.5)])
    context = multiprocessing.get_context("spawn")
    as_json = settings.model_dump_json()
    processes = [
        context.Process(target=_label_in_a_process, args=(as_json, item.sha256, label, 15))
        for label in ("cat", "dog", None)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    _assert_disk_follows_ledger(settings, session_factory)


def test_the_repair_pass_moves_and_removes_copies_the_ledger_disagrees_with(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    moved, undone, kept = seed_images(settings, session_factory, [("cat", 0.5)] * 3)
    for item in (moved, undone, kept):
        apply_label(settings, session_factory, item.sha256, "cat")
    remove_label(settings, session_factory, undone.sha256)
    root = settings.labeled_path
    # What a crash between the ledger's commit and the file operations leaves behind.
    (root / "dog").mkdir()
    (root / "cat" / f"{moved.sha256}.png").rename(root / "dog" / f"{moved.sha256}.png")
    (root / "dog" / f"{undone.sha256}.png").write_bytes(undone.path.read_bytes())
    (root / "dog" / f"{kept.sha256}.png").write_bytes(kept.path.read_bytes())
    person = root / "dog" / "my-own-photo.png"
    person.write_bytes(kept.path.read_bytes())

    found = repair(root, session_factory)

    assert (found.moved, found.removed) == (1, 2)
    _assert_disk_follows_ledger(settings, session_factory)
    assert person.exists(), "a file a person put there is not the repair's to touch"


@pytest.mark.parametrize("ledger_says", ["dog", None])
def test_training_never_takes_an_image_in_two_classes_unless_the_ledger_says_which(
    settings: Settings, session_factory: sessionmaker[Session], ledger_says: str | None
) -> None:
    items = seed_images(settings, session_factory, [("cat", 0.5)] * 16)
    root = settings.labeled_path
    for n, item in enumerate(items):
        folder = root / ("cat" if n % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{item.sha256}.png").write_bytes(item.path.read_bytes())
    twin = items[0]  # in dog already; a copy in cat too
    (root / "cat" / f"{twin.sha256}.png").write_bytes(twin.path.read_bytes())
    truth = {twin.sha256: ledger_says}

    labeled = scan_labeled(
        root,
        val_fraction=0.25,
        min_images_per_class=2,
        max_pixels=10**8,
        human_labels=lambda shas: {s: truth[s] for s in shas if s in truth},
    )

    classes = [
        labeled.classes[s.label]
        for s in labeled.train + labeled.val + labeled.holdout
        if s.sha256 == twin.sha256
    ]
    assert classes == ([ledger_says] if ledger_says else [])
