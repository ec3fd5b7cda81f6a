"""Near-duplicates: the same picture under other bytes (re-saved, resized, lightly cropped).
Every image the worker classifies gets a 256-bit perceptual hash (:mod:`imaging.perceptual`);
a grouping pass links images whose hashes are within a threshold calibrated on this ledger's
own images, and stores each image's group (``images.dup_group``) for Browse's filter and
group view. The CLI's ``near-duplicates``, the web app's API and Browse come here.

The pass compares pairs by brute force (NumPy, in blocks): about 7 s for 20,000 images on 2
cores (docs/web.md). Up to :data:`MAX_PASS_IMAGES` each pass compares every pair afresh; beyond,
a pass compares only images it has not compared yet (at most as much work as a full pass at
the limit) against all the others and links them into the stored groups, so a large ledger
catches up over passes instead of being refused. Looking up one image's near-twins is a single
scan (milliseconds).
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
    linked,
    near_pairs,
)
from objectstore.inbox import read_image
from pipeline.errors import Problem, UseCaseError

STATE_FILE = "near_duplicates.json"
#: Which images a pass compared at the threshold in the state file (image ids, NumPy).
COMPARED_FILE = "near_duplicates_compared.npy"
#: Up to this many hashed images a pass compares every pair afresh (about a minute on 2
#: cores); beyond, passes compare what is new, this much work at most each.
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
    pending: int = 0  # hashed images no pass has compared yet (later passes will)


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
    """Group the hashed images, store the groups, and return them. Up to
    :data:`MAX_PASS_IMAGES` every pair is compared; beyond, the images no pass compared yet
    (as many as a full pass at the limit costs) against all, joined to the stored groups."""
    started = time.perf_counter()
    with transaction(sessions) as session:
        ids, shas, hashes = near.hashes(session)
        stored = near.stored_groups(session)
    words = as_words(hashes)
    found = _threshold(settings, sessions, shas, words)
    state = last_pass(settings) or {}
    compared = _compared(settings, state, found.bits) if len(ids) > MAX_PASS_IMAGES else None
    if compared is None:  # every pair afresh, or (over the limit) from the start, in slices
        compared, stored = np.zeros(0, dtype=np.int64), {}
    # The compared images first, then the rest: a pass adds rows [start, stop) of this order.
    seen = np.isin(np.asarray(ids, dtype=np.int64), compared)
    order = np.argsort(~seen, kind="stable")
    ids, shas, words = [ids[i] for i in order], [shas[i] for i in order], words[order]
    start = int(seen.sum())
    stop = len(ids) if len(ids) <= MAX_PASS_IMAGES else _slice_end(start, len(ids))
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    links = [(row_of[i], row_of[g]) for i, g in stored.items() if i in row_of and g in row_of]
    rows = linked(len(ids), [*links, *near_pairs(words, found.bits, start=start, stop=stop)])
    by_id = sorted(sorted(ids[i] for i in group) for group in rows)  # oldest first
    sha_of = dict(zip(ids, shas, strict=True))
    with transaction(sessions) as session:
        near.save_groups(session, by_id)
    _save_compared(settings, np.asarray(ids[:stop], dtype=np.int64))
    result = PassResult(
        groups=[[sha_of[i] for i in group] for group in by_id],
        images=stop,
        threshold_bits=found.bits,
        threshold=found.reason,
        seconds=round(time.perf_counter() - started, 3),
        at=time.time(),
        pending=len(ids) - stop,
    )
    state.update(
        images=len(ids), groups=len(rows), at=result.at, seconds=result.seconds,
        compared_bits=found.bits, pending=result.pending,
    )
    _save_state(settings, state)
    return result


def _slice_end(start: int, total: int) -> int:
    """Where a pass over a large ledger stops: rows added against all earlier ones cost about
    (stop - start) x stop comparisons; a full pass at the limit costs MAX^2 / 2."""
    budget = MAX_PASS_IMAGES * MAX_PASS_IMAGES // 2
    stop = start + max(1, budget // max(total, 1))
    return min(total, stop)


def _compared(settings: Settings, state: dict[str, object], bits: int) -> np.ndarray | None:
    """The ids compared at ``bits`` by earlier passes, or None (none, or another threshold)."""
    if state.get("compared_bits") != bits:
        return None
    try:
        return np.asarray(np.load(settings.data_dir / COMPARED_FILE), dtype=np.int64)
    except (OSError, ValueError):
        return None


def _save_compared(settings: Settings, ids: np.ndarray) -> None:
    path = settings.data_dir / COMPARED_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, ids)
    os.replace(tmp, path)


def refresh_if_stale(settings: Settings, sessions: sessionmaker[Session]) -> PassResult | None:
    """A pass where images were hashed since the last one, or some are still to compare;
    None where the stored groups are current."""
    with transaction(sessions) as session:
        count = near.hashed_count(session)
    state = last_pass(settings) or {}
    if state.get("images") == count and not state.get("pending"):
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
