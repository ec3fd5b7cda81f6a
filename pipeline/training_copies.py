"""The training copies a label writes: ``labeled/<class>/<sha256>.<ext>``. The ledger is their
single source of truth, and the folders follow it:

- **One label at a time per image.** A label, a relabel and an undo of one image hold its lock
  (:func:`image_lock`: ``flock`` on one of 256 files in ``labeled/.locks/``, by the hash's
  first byte), from reading the ledger to the last file operation, so two people (or two
  processes, or two threads of the web app) acting on one image at once are serialised:
  without it, both copies of a label/relabel pair stayed on disk and the next run trained on
  both.
- **After each change, the image's copies follow the ledger** (:func:`follow_ledger`): every
  ``<sha256>.*`` in another class folder is removed.
- **At start, a repair pass** (:func:`repair`) does the same for every copy the ledger
  disagrees with (a crash between the ledger's commit and the file operation): a copy of an
  undone label is removed, one in the wrong class is moved to the ledger's. Files a person put
  there (any other name, or a hash the ledger never labeled) are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from contract.labeled import VAL_DIR
from contract.paths import from_ledger
from db import labels
from db.engine import transaction

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
#: A training copy's name: the content hash, then the format's extension.
COPY_NAME = re.compile(r"^([0-9a-f]{64})(\.[A-Za-z0-9]+)$")


@contextlib.contextmanager
def image_lock(labeled_root: Path, sha256: str) -> Iterator[None]:
    """Hold the image's label lock. ``flock`` locks belong to the open file, so separate
    opens exclude each other across threads as well as processes."""
    folder = labeled_root / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / sha256[:2], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def copies_of(labeled_root: Path, sha256: str) -> list[Path]:
    """The training copies of one image, in any class folder (``_val/`` ones are a person's
    choice and are not ours to move)."""
    found: list[Path] = []
    try:
        folders = [e for e in os.scandir(labeled_root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return found
    for folder in folders:
        if folder.name.startswith(".") or folder.name == VAL_DIR:
            continue
        with contextlib.suppress(OSError):
            found += [
                Path(e.path)
                for e in os.scandir(folder.path)
                if e.name.startswith(sha256) and COPY_NAME.match(e.name)
            ]
    return found


def follow_ledger(labeled_root: Path, sha256: str, keep: Path | None) -> int:
    """Remove every copy of ``sha256`` but ``keep`` (the ledger's current one, or None after an
    undo); returns how many went. Call it holding :func:`image_lock`."""
    removed = 0
    for path in copies_of(labeled_root, sha256):
        if keep is not None and path == keep:
            continue
        remove(path, labeled_root)
        removed += 1
    return removed


def place(source: str, data: bytes, target: Path) -> None:
    """``target`` with the bytes ``data`` (read from ``source``, a ledger path): a hard link
    when it works and still holds those bytes, else a copy; atomic either way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(os.path.realpath(from_ledger(source)), tmp)
            linked = hashlib.sha256(tmp.read_bytes()).digest() == hashlib.sha256(data).digest()
        except OSError:  # another file system, or links not allowed
            linked = False
        if not linked:
            tmp.unlink(missing_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(path: Path, labeled_root: Path) -> None:
    """Remove a training copy this module wrote (never anything outside labeled/), and its
    class folder once nothing is left in it (a typo's folder does not linger)."""
    root = labeled_root.resolve()
    folder = path.resolve().parent
    if folder.parent != root:
        log.warning("not removing %s: not a training copy under %s", path, root)
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):  # not empty (other images, a person's files): kept
        folder.rmdir()


@dataclass(frozen=True, slots=True)
class Repaired:
    removed: int  # copies of undone labels, or second copies
    moved: int  # copies moved to the class the ledger says


def repair(labeled_root: Path, sessions: sessionmaker[Session]) -> Repaired:
    """Make every training copy named by a content hash agree with the ledger's labels."""
    by_sha: dict[str, list[Path]] = {}
    try:
        folders = [e for e in os.scandir(labeled_root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return Repaired(0, 0)
    for folder in folders:
        if folder.name.startswith(".") or folder.name == VAL_DIR:
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder.path):
                match = COPY_NAME.match(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    by_sha.setdefault(match.group(1), []).append(Path(entry.path))
    if not by_sha:
        return Repaired(0, 0)
    with transaction(sessions) as session:
        truth = labels.human_labels_of(session, list(by_sha))
    removed = moved = 0
    for sha, paths in by_sha.items():
        if sha not in truth:  # never labeled here: a person's file
            continue
        with image_lock(labeled_root, sha):
            with transaction(sessions) as session:  # fresh, under the lock
                label = labels.human_labels_of(session, [sha]).get(sha)
            paths = [p for p in paths if p.exists()]
            wanted = [p for p in paths if label is not None and p.parent.name == label]
            if label is not None and not wanted and paths:
                target = labeled_root / label / paths[0].name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(paths[0], target)
                with contextlib.suppress(OSError):
                    paths[0].parent.rmdir()
                moved += 1
                wanted = [target]
            removed += follow_ledger(labeled_root, sha, wanted[0] if wanted else None)
    if removed or moved:
        log.warning(
            "labeled/ repaired to agree with the ledger: %d copy(ies) removed, %d moved",
            removed,
            moved,
        )
    return Repaired(removed, moved)
