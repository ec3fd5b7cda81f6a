"""Where the system keeps its own files, and the one rule about them: the inbox holds none of
them. A watcher that watched the data dir would hash the ledger while SQLite writes it, its WAL,
Redis's append-only file and the logs, and record them as images (and an inbox inside the
training folders would make every drop a class). ``up``, ``watch`` and ``serve`` refuse such a
layout at start (:func:`inbox_overlap`); the watcher also skips any path that resolves into one
of :func:`own_places`, whatever symlink leads there.
"""

from __future__ import annotations

import os
from pathlib import Path

from contract.settings import Settings

#: The data dir's folders the system writes (the ledger's folder is the data dir itself).
OWN_FOLDERS = ("models", "logs", "redis")
#: The files SQLite keeps beside a ledger file.
SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def sqlite_file(settings: Settings) -> Path | None:
    """The ledger's file when the ledger is SQLite, else None. Parsed by hand: the contract
    imports no SQLAlchemy."""
    url = settings.db_url
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            database = url[len(prefix) :].split("?", 1)[0]
            if database and database != ":memory:":
                return Path(database)
    return None


def own_places(settings: Settings) -> list[tuple[str, Path]]:
    """(what it is, resolved path) for everything the system writes that must never be read
    as an inbox file: the data dir, the training folders and the ledger's files."""
    places = [
        ("the data dir (ledger, models, Redis, logs)", settings.data_dir),
        ("the labeled folder (training data)", settings.labeled_path),
    ]
    ledger = sqlite_file(settings)
    if ledger is not None:
        places += [("the ledger", ledger.with_name(ledger.name + s)) for s in SQLITE_SIDE_FILES]
    return [(what, Path(os.path.realpath(path))) for what, path in places]


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def inbox_overlap(settings: Settings) -> str | None:
    """Why the inbox cannot be where it is (it holds, or lies in, a place of the system's
    own), naming both paths; None when it stands apart."""
    inbox = Path(os.path.realpath(settings.inbox))
    data_dir = Path(os.path.realpath(settings.data_dir))
    labeled = Path(os.path.realpath(settings.labeled_path))
    fix = "give the inbox a folder of its own"
    if _within(data_dir, inbox):
        where = "is" if inbox == data_dir else "holds"
        return (
            f"the inbox {inbox} {where} the data dir {data_dir} (ledger, models, Redis, logs): "
            f"the watcher would read the system's own files as images; {fix}, e.g. "
            f"{inbox / 'inbox'} or --data-dir outside it"
        )
    if _within(labeled, inbox) or _within(inbox, labeled):
        return (
            f"the inbox {inbox} and the labeled folder {labeled} overlap: training copies "
            f"would be classified again, or new drops read as a class; {fix}"
        )
    for name in OWN_FOLDERS:
        folder = data_dir / name
        if _within(inbox, folder):
            return f"the inbox {inbox} lies in {folder}, which the system writes; {fix}"
    ledger = sqlite_file(settings)
    if ledger is not None and _within(Path(os.path.realpath(ledger)), inbox):
        return f"the inbox {inbox} holds the ledger {ledger}; {fix}"
    return None
