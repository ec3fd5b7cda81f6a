"""Bad and odd inputs, generated here: every kind gets its expected outcome (done, or failed with
a clear reason, or ignored by the watcher), no worker crashes, no neighbour is harmed, and no
file is retried for ever.

Three levels:

* unit: each file kind through ``worker.model.preprocess`` (what the worker's decode threads run);
* worker: the file kinds through a real ``inbox-classifier worker`` process, all in the same
  batches as good images;
* end to end: the whole corpus (file kinds plus what only the watcher can meet: symlinks out of
  the inbox, FIFOs and devices, odd names, very long paths, a file still being written, a
  folder dropped whole) through the real ``watch`` and ``worker`` processes.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.settings import Settings
from db.models import ImageStatus
from imaging.decode import BadImage, decode
from tests.helpers.corpus import (
    CONTENT_CASES,
    DONE,
    IGNORED,
    LIMIT,
    NAME_CASES,
    WATCHER_CASES,
    Case,
    animated_gif,
    encode,
    exif_rotated_jpeg,
    multipage_tiff,
    write_content,
    write_names,
)
from tests.helpers.corpus import (
    name_of as _name,
)
from tests.helpers.faults import (
    enqueue,
    max_attempts_seen,
    roles,
    rows_by_name,
    start_role,
    start_worker,
    status_counts,
    wait_for,
)
from tests.helpers.images import random_image
from worker.model.preprocess import Preprocessing, load_for_model

pytestmark = pytest.mark.timeout(300)

# --- unit: each file kind through preprocessing -------------------------------------------------


@pytest.mark.parametrize("case", CONTENT_CASES, ids=[c.rel for c in CONTENT_CASES])
def test_each_file_kind_decodes_or_fails_with_its_reason(case: Case) -> None:
    assert case.content is not None
    data = case.content(1)
    if case.expect == DONE:
        array = load_for_model(data, Preprocessing(), LIMIT)
        assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    else:
        with pytest.raises(BadImage, match=case.reason):
            load_for_model(data, Preprocessing(), LIMIT)


def test_exif_rotation_is_applied_to_the_corpus_jpeg() -> None:
    data = exif_rotated_jpeg(3)
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (200, 100)  # landscape as stored
    decoded = decode(data, LIMIT, min_side=16)
    assert decoded.size[1] > decoded.size[0]  # portrait as displayed
    # the top-left of the displayed image is the stored bottom-left (90° clockwise)
    source = np.asarray(random_image(3, (200, 100)), dtype=np.int16)
    shown = np.asarray(decode(data, LIMIT, min_side=100).resize((100, 200)), dtype=np.int16)
    expected = np.rot90(source, k=-1)
    assert np.abs(shown - expected).mean() < np.abs(shown - np.rot90(source, k=1)).mean()


def test_animated_and_multipage_use_the_first_frame() -> None:
    for data in (animated_gif(7), multipage_tiff(7)):
        first = np.asarray(random_image(7, (50, 40)), dtype=np.int16)
        got = np.asarray(decode(data, LIMIT, min_side=40), dtype=np.int16)
        other = np.asarray(random_image(8, (50, 40)), dtype=np.int16)
        assert np.abs(got - first).mean() < np.abs(got - other).mean()


# --- worker: the file kinds in real batches, next to good images --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("gpu_decode", ["off", "on"])  # on: the batched device path, on the CPU
def test_file_kinds_through_a_real_worker_fail_alone_and_are_not_retried(
    settings: Settings, session_factory, tmp_path: Path, gpu_decode: str
) -> None:
    s = settings.model_copy(update={"files_per_message": 6, "requeue_after_s": 2.0,
                                    "reconcile_interval_s": 1.0, "max_attempts": 3,
                                    "gpu_decode": gpu_decode})
    paths = write_content(s.inbox, CONTENT_CASES) + write_names(s.inbox, NAME_CASES)
    # same bytes as a failing file, different name: one image, both paths get the outcome
    twin = s.inbox / "zero-byte-twin.jpg"
    twin.write_bytes(b"")
    enqueue(s, session_factory, [*paths, twin])
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(worker := start_worker(s, logs))
        started.append(start_role(s, logs, "beat", "beat"))
        took = wait_for(lambda: status_counts(session_factory)["queued"] == 0, 120,
                        lambda: f"settled {status_counts(session_factory)}\n{worker.tail()}")
        time.sleep(3)  # reconciler ticks: nothing settled may be sent again
        assert worker.alive(), worker.tail()
    rows = rows_by_name(session_factory)
    problems = []
    for case in CONTENT_CASES + NAME_CASES:
        row = rows.get(_name(case))
        if row is None or row.status != case.expect or case.reason not in (row.error or ""):
            problems.append((case.rel, case.expect, row and row.status, row and row.error))
    assert problems == []
    assert rows["zero-byte-twin.jpg"].status == ImageStatus.FAILED
    assert max_attempts_seen(session_factory) <= 1, "a settled file was sent again"
    print(f"\n[measured] bad-input corpus via worker: {len(paths) + 1} files settled "
          f"in {took:.1f}s")


# --- end to end: the whole corpus through the watcher and a worker -------------------------------


def _mkfifo(path: Path) -> None:
    os.mkfifo(path)


def _mknod(path: Path) -> bool:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        return True
    except (PermissionError, OSError):
        return False


def _slow_write(path: Path, data: bytes, seconds: float) -> threading.Thread:
    def run() -> None:
        steps = 10
        size = len(data) // steps + 1
        with open(path, "wb") as handle:
            for start in range(0, len(data), size):
                handle.write(data[start : start + size])
                handle.flush()
                time.sleep(seconds / steps)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_whole_corpus_through_the_real_watcher_and_worker(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    pytest.importorskip("watcher.service", reason="the watcher service is not there yet")
    s = settings.model_copy(update={"requeue_after_s": 3.0, "reconcile_interval_s": 2.0,
                                    "max_attempts": 3, "rescan_interval_s": 5.0})
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    random_image(999).save(secret, "JPEG")
    staging = tmp_path / "staging"
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(worker := start_worker(s, logs))
        started.append(start_role(s, logs, "beat", "beat"))
        started.append(watcher := start_role(s, logs, "watch", "watch"))
        time.sleep(1.5)  # let it start watching (a rescan would find everything anyway)
        t0 = time.monotonic()
        # special files first: if they could hang the watcher, nothing after them is found
        (s.inbox / "link-outside.jpg").symlink_to(secret)
        _mkfifo(s.inbox / "fifo.jpg")
        has_device = _mknod(s.inbox / "device.jpg")
        random_image(7).save(s.inbox / ".hidden.jpg", "JPEG")
        random_image(8).save(s.inbox / "download.jpg.part", "JPEG")
        slow = _slow_write(s.inbox / "slow-writer.jpg",
                           encode(random_image(9, (800, 600)), "JPEG", quality=95), 5.0)
        # the file kinds and odd names, written in staging and moved in (as producers do)
        for path in write_content(staging, CONTENT_CASES) + write_names(staging, NAME_CASES):
            target = s.inbox / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        folder = staging / "dropped-folder"
        random_image(10).save(_mk(folder / "a.jpg"), "JPEG")
        random_image(11).save(_mk(folder / "sub" / "b.jpg"), "JPEG")
        os.replace(folder, s.inbox / "dropped-folder")
        slow.join()
        expected = len(CONTENT_CASES) + len(NAME_CASES) + 3  # + slow writer + folder's 2

        def settled() -> bool:
            counts = status_counts(session_factory)
            return counts["queued"] == 0 and counts["done"] + counts["failed"] >= expected

        wait_for(settled, 120, lambda: f"{expected} settled "
                        f"{status_counts(session_factory)}\n{watcher.tail()}\n{worker.tail()}")
        took = time.monotonic() - t0
        time.sleep(3)  # a rescan and a reconcile tick: nothing more may appear or be re-sent
        assert watcher.alive(), watcher.tail()
        assert worker.alive(), worker.tail()
    rows = rows_by_name(session_factory)
    problems = []
    for case in CONTENT_CASES + NAME_CASES + WATCHER_CASES:
        if case.rel == "device.jpg" and not has_device:
            continue
        row = rows.get(_name(case))
        got = IGNORED if row is None else row.status
        if got != case.expect or (row is not None and case.reason not in (row.error or "")):
            problems.append((case.rel, case.expect, got, row and row.error))
    assert problems == []
    assert len(rows) == expected, sorted(set(rows) - {_name(c) for c in CONTENT_CASES})
    assert rows["slow-writer.jpg"].size == (s.inbox / "slow-writer.jpg").stat().st_size
    assert secret.read_bytes() and not any(r.sha256 == _sha(secret) for r in rows.values())
    assert max_attempts_seen(session_factory) <= 1
    print(f"\n[measured] whole corpus via watcher + worker: {expected} files settled "
          f"{took:.1f}s after the drop began (incl. the 5 s slow writer)")


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()

