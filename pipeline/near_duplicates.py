"""Near-duplicates: the same picture under other bytes (re-saved, resized, lightly cropped).
Every image the worker classifies gets a 256-bit perceptual hash (:mod:`imaging.perceptual`);
a grouping pass links images whose hashes are within a threshold calibrated on this ledger's
own images, and stores each image's group (``images.dup_group``) for Browse's filter and
group view. The CLI's ``near-duplicates``, the web app's API and Browse come here.

The pass compares every pair by brute force (NumPy, in blocks): about 7 s for 20,000 images
on 2 cores (docs/web.md); over :data:`MAX_PASS_IMAGES` it refuses, saying so, where an index
would have to take over. Looking up one image's near-twins is a single scan (milliseconds).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from contract.files import FileGone, FileRefused
from contract.settings import Settings
from db import labels, near
from db import suspects as labeled_store
from db.engine import transaction
from imaging.perceptual import (
    Threshold,
    as_words,
    calibrated_threshold,
    distances,
    groups,
)
from objectstore.inbox import read_image
from pipeline.errors import Problem, UseCaseError

STATE_FILE = "near_duplicates.json"
#: The most images a grouping pass compares pair by pair (about a minute on 2 cores).
MAX_PASS_IMAGES = 50_000
#: Images whose bytes calibrate the threshold.
CALIBRATION_SAMPLE = 120
#: Recalibrate once the hashed images grew (or shrank) by this share.
RECALIBRATE_AFTER = 0.25


@dataclass(frozen=True)
class PassResult:
    groups: list[list[str]]  # content hashes, each group by image id
    images: int  # hashed images compared
    threshold_bits: int
    threshold: str
    seconds: float
    at: float  # time.time() of the pass


@dataclass(frozen=True)
class Twin:
    sha256: str
    distance: int
    where: str  # inbox | labeled
    path: str | None = None  # under labeled/, for a labeled twin
    label: str | None = None  # its label, for a labeled twin


def _state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


def last_pass(settings: Settings) -> dict[str, object] | None:
    try:
        return dict(json.loads(_state_path(settings).read_text()))
    except (OSError, ValueError):
        return None


def _save_state(settings: Settings, state: dict[str, object]) -> None:
    path = _state_path(settings)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def threshold(settings: Settings, sessions: sessionmaker[Session]) -> Threshold:
    """The ledger's threshold: the last one while the hashed images are about as many, else
    calibrated afresh on a sample of them (their files must still be in the inbox)."""
    with transaction(sessions) as session:
        _ids, shas, hashes = near.hashes(session)
    return _threshold(settings, sessions, shas, as_words(hashes))


def _threshold(
    settings: Settings, sessions: sessionmaker[Session], shas: list[str], words: np.ndarray
) -> Threshold:
    state = last_pass(settings) or {}
    calibrated = state.get("calibrated_on")
    if (
        isinstance(calibrated, int)
        and calibrated
        and abs(len(shas) - calibrated) <= (RECALIBRATE_AFTER * calibrated)
    ):
        return Threshold(
            int(str(state["threshold_bits"])),
            int(str(state.get("copies", 0))),
            str(state["threshold"]),
        )
    chosen = sorted(range(len(shas)), key=lambda i: shas[i])[:CALIBRATION_SAMPLE]
    samples: list[bytes] = []
    rows: list[int] = []
    with transaction(sessions) as session:
        for i in chosen:
            target = labels.target(session, shas[i])
            if target is None:
                continue
            try:
                found = read_image(settings, target.paths, shas[i])
            except (FileGone, FileRefused):
                continue
            samples.append(found.data)
            rows.append(i)
    found_threshold = calibrated_threshold(samples, rows, words)
    state.update(
        calibrated_on=len(shas),
        threshold_bits=found_threshold.bits,
        threshold=found_threshold.reason,
        copies=found_threshold.copies,
    )
    _save_state(settings, state)
    return found_threshold


def refresh(settings: Settings, sessions: sessionmaker[Session]) -> PassResult:
    """Group every hashed image, store the groups, and return them. Raises
    :class:`UseCaseError` over :data:`MAX_PASS_IMAGES`."""
    started = time.perf_counter()
    with transaction(sessions) as session:
        ids, shas, hashes = near.hashes(session)
    if len(ids) > MAX_PASS_IMAGES:
        raise UseCaseError(
            Problem.CONFLICT,
            f"{len(ids):,} hashed images: a grouping pass compares every pair and stops at "
            f"{MAX_PASS_IMAGES:,}; look up one image's near-twins instead "
            "(GET /api/images/{sha256}/similar)",
        )
    words = as_words(hashes)
    found = _threshold(settings, sessions, shas, words)
    rows = groups(words, found.bits)
    with transaction(sessions) as session:
        near.save_groups(session, [[ids[i] for i in group] for group in rows])
    result = PassResult(
        groups=[[shas[i] for i in group] for group in rows],
        images=len(ids),
        threshold_bits=found.bits,
        threshold=found.reason,
        seconds=round(time.perf_counter() - started, 3),
        at=time.time(),
    )
    state = last_pass(settings) or {}
    state.update(images=len(ids), groups=len(rows), at=result.at, seconds=result.seconds)
    _save_state(settings, state)
    return result


def refresh_if_stale(settings: Settings, sessions: sessionmaker[Session]) -> PassResult | None:
    """A pass where images were hashed since the last one (and the ledger is small enough for
    one); None where the stored groups are current or a pass would be too long."""
    with transaction(sessions) as session:
        count = near.hashed_count(session)
    state = last_pass(settings) or {}
    if state.get("images") == count or count > MAX_PASS_IMAGES:
        return None
    return refresh(settings, sessions)


def twins(settings: Settings, sessions: sessionmaker[Session], sha256: str) -> list[Twin]:
    """The image's near-twins: other inbox images and labeled images within the threshold,
    nearest first. Raises :class:`UseCaseError` when the image has no hash."""
    with transaction(sessions) as session:
        own = near.phash_of(session, sha256)
        if own is None:
            own = next(
                (h for s, _, _, h in labeled_store.labeled_hashes(session) if s == sha256), None
            )
        _ids, shas, hashes = near.hashes(session)
        labeled = labeled_store.labeled_hashes(session)
    if own is None:
        raise UseCaseError(
            Problem.NOT_FOUND,
            f"no perceptual hash for {sha256}: it is not in the ledger, or was classified "
            "before hashes were kept (reclassify it)",
        )
    bits = _threshold(settings, sessions, shas, as_words(hashes)).bits
    found: list[Twin] = []
    if hashes:
        apart = distances(as_words(hashes), own)
        for i in np.flatnonzero(apart <= bits).tolist():
            if shas[i] != sha256:
                found.append(Twin(shas[i], int(apart[i]), "inbox"))
    if labeled:
        apart = distances(as_words([h for _, _, _, h in labeled]), own)
        for i in np.flatnonzero(apart <= bits).tolist():
            sha, path, label, _ = labeled[i]
            if sha != sha256:
                found.append(Twin(sha, int(apart[i]), "labeled", path, label))
    return sorted(found, key=lambda t: (t.distance, t.where, t.sha256))


def as_dict(result: PassResult) -> dict[str, object]:
    return asdict(result)
