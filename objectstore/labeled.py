"""Corrections in the bucket: with the inbox in a bucket, a person's label also copies the
object into ``labeled/<class>/<sha256>.<ext>`` of the same bucket (a server-side copy: the
bytes do not travel), and the train worker mirrors that prefix into its labeled folder before
each run. So the web app, the workers and the trainer can run on different hosts with no
shared file system; examples uploaded there by hand (``labeled/<class>/<any name>``) train
too.

The mirror downloads what is new or changed (by size and ETag), removes what it downloaded
before and the bucket no longer has (a label undone or moved on another host), and leaves
alone the files it did not put there. Keys are checked as class folders and file names are:
a key that is no safe class or name is skipped, and said once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from contract.bucket import LABELED_PREFIX
from contract.failures import Unusable
from contract.labeled import is_image_name, label_problem
from contract.settings import Settings
from objectstore.inbox import store_for
from objectstore.store import ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)

MANIFEST = "labeled-mirror.json"
MAX_NAME_BYTES = 255  # a file name on Linux


def copy_key(label: str, sha256: str, extension: str) -> str:
    return f"{LABELED_PREFIX}{label}/{sha256}{extension}"


def copy_label(store: ObjectStore, source_key: str, label: str, sha256: str, ext: str) -> str:
    """The labeled object's copy under ``labeled/<label>/``; its key."""
    key = copy_key(label, sha256, ext)
    store.copy(source_key, key)
    return key


def drop_label(store: ObjectStore, label: str, sha256: str) -> int:
    """Remove the image's copies under ``labeled/<label>/`` (any extension); how many."""
    found = list(store.listing_under(f"{LABELED_PREFIX}{label}/{sha256}"))
    for info in found:
        store.delete(info.key)
    return len(found)


@dataclass(frozen=True)
class Mirrored:
    downloaded: int
    removed: int
    skipped: int  # keys that are no safe class folder or file name
    files: int  # objects under labeled/ now mirrored


def _safe(key: str) -> tuple[str, str] | None:
    rest = key[len(LABELED_PREFIX) :]
    parts = rest.split("/")
    if len(parts) != 2:
        return None
    label, name = parts
    if label_problem(label) is not None or not is_image_name(name):
        return None
    if len(name.encode()) > MAX_NAME_BYTES or name in (".", ".."):
        return None
    return label, name


def mirror(store: ObjectStore, root: Path, state_dir: Path) -> Mirrored:
    """Make ``root`` (the labeled folder) hold the bucket's ``labeled/`` objects."""
    manifest_path = state_dir / MANIFEST
    try:
        before: dict[str, list[object]] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        before = {}
    now: dict[str, list[object]] = {}
    downloaded = skipped = 0
    for info in store.listing_under(LABELED_PREFIX):
        place = _safe(info.key)
        if place is None:
            skipped += 1
            log.warning("%s is not labeled/<class>/<image name>: not trained on", info.key)
            continue
        rel = f"{place[0]}/{place[1]}"
        target = root / place[0] / place[1]
        if before.get(rel) != [info.etag, info.size] or not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(store.read_bounded(info.key, max(info.size, 1)))
            os.replace(tmp, target)
            downloaded += 1
        now[rel] = [info.etag, info.size]
    removed = 0
    for rel in set(before) - set(now):
        path = root / rel
        if path.is_file():
            path.unlink()
            removed += 1
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the class folder, once empty
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = manifest_path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(now))
    os.replace(tmp, manifest_path)
    return Mirrored(downloaded, removed, skipped, len(now))


def mirror_for(settings: Settings) -> Mirrored | None:
    """Before a training run: the bucket's ``labeled/`` into the labeled folder, when the
    inbox is a bucket. The store being away trains on what the folder holds, and says so."""
    store = store_for(settings)
    if store is None:
        return None
    try:
        done = mirror(store, settings.labeled_path, settings.data_dir)
    except (StoreUnavailable, Unusable, OSError) as exc:
        log.warning(
            "labeled/ of %s not mirrored (%s): training on %s as it is",
            store.location.url,
            exc,
            settings.labeled_path,
        )
        return None
    log.info(
        "mirrored %s labeled/: %d file(s), %d downloaded, %d removed, %d skipped",
        store.location.url,
        done.files,
        done.downloaded,
        done.removed,
        done.skipped,
    )
    return done
