"""A file counts when its writer is done, and the watcher never reads the system's own files.

- Writers that close and reopen a file per chunk (``dd oflag=append``, appending copy tools),
  and a file renamed into the inbox while it is still written, are recorded once, complete: not
  once per chunk as partial contents that then fail as corrupt (14 extra failed rows for one
  file before).
- A layout whose inbox holds the data dir, the labeled folder or the ledger is refused at start
  with one line naming both paths (`.`, "" and the data dir itself included), and a symlink in
  the inbox that leads into the data dir is not followed.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from contract.layout import inbox_overlap
from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImagePath
from tests.helpers.images import random_image, write_image
from tests.helpers.pipeline import wait_until
from watcher.service import Watcher

pytestmark = pytest.mark.timeout(120)


@contextmanager
def watching(settings: Settings) -> Iterator[Watcher]:
    watcher = Watcher(settings)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, ready), daemon=True)
    thread.start()
    assert ready.wait(30), "the watcher did not take in its start-up rescan"
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(30)


def _recorded(session_factory) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """path -> the content hashes recorded for it."""
    with transaction(session_factory) as session:
        rows = session.execute(select(ImagePath.path, Image.sha256).join(Image)).all()
    out: dict[str, list[str]] = {}
    for path, sha in rows:
        out.setdefault(path, []).append(sha)
    return out


def _images(session_factory) -> list[str]:  # type: ignore[no-untyped-def]
    """Every content the ledger holds (a partial one keeps its row when its path moves on)."""
    with transaction(session_factory) as session:
        return list(session.scalars(select(Image.sha256)))


def _jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    random_image(seed, size).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_writer_that_appends_in_chunks_is_recorded_once_when_it_is_done(
    settings: Settings, session_factory, fmt: str  # type: ignore[no-untyped-def]
) -> None:
    buffer = io.BytesIO()
    random_image(7, (640, 480)).save(buffer, fmt)
    data = buffer.getvalue()
    target = settings.inbox / f"chunked.{fmt.lower()}"
    with watching(settings):
        chunk = max(1, len(data) // 12)
        for start in range(0, len(data), chunk):
            # dd conv=notrunc oflag=append: open, write one chunk, close; pause; again.
            with open(target, "ab") as handle:
                handle.write(data[start : start + chunk])
            time.sleep(0.05)
        wait_until(lambda: str(target) in _recorded(session_factory), 20, "the file recorded")
        time.sleep(settings.quiet_period_s * 2)
    assert _images(session_factory) == [hashlib.sha256(data).hexdigest()]


def test_dd_with_append_is_recorded_once(settings: Settings, session_factory) -> None:  # type: ignore[no-untyped-def]
    source = settings.data_dir / "source.jpg"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(_jpeg(3))
    target = settings.inbox / "dd.jpg"
    blocks = (source.stat().st_size + 4095) // 4096
    with watching(settings):
        for block in range(blocks):
            subprocess.run(
                ["dd", f"if={source}", f"of={target}", "bs=4096", f"skip={block}", "count=1",
                 "oflag=append", "conv=notrunc", "status=none"],
                check=True,
            )
        wait_until(lambda: str(target) in _recorded(session_factory), 20, "the file recorded")
        time.sleep(settings.quiet_period_s * 2)
    assert _images(session_factory) == [hashlib.sha256(source.read_bytes()).hexdigest()]


def test_a_file_renamed_in_while_still_written_waits_for_its_writer(
    settings: Settings, session_factory  # type: ignore[no-untyped-def]
) -> None:
    data = _jpeg(11)
    outside = settings.data_dir / "staging.jpg"
    outside.parent.mkdir(parents=True, exist_ok=True)
    target = settings.inbox / "renamed.jpg"
    with watching(settings), open(outside, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.rename(outside, target)  # moved in half-written; the writer goes on
        time.sleep(settings.quiet_period_s * 3)  # longer than a quiet period: still open
        assert str(target) not in _recorded(session_factory)
        handle.write(data[len(data) // 2 :])
        handle.close()
        wait_until(lambda: str(target) in _recorded(session_factory), 20, "the file recorded")
        time.sleep(settings.quiet_period_s * 2)
    assert _images(session_factory) == [hashlib.sha256(data).hexdigest()]


def test_a_truncated_file_is_still_recorded_once_its_writer_is_gone(
    settings: Settings, session_factory  # type: ignore[no-untyped-def]
) -> None:
    data = _jpeg(5)
    target = settings.inbox / "truncated.jpg"
    with watching(settings):
        target.write_bytes(data[: len(data) // 3])
        wait_until(lambda: str(target) in _recorded(session_factory), 20, "the file recorded")


# --- the system's own files ---------------------------------------------------------------------


@pytest.mark.parametrize("inbox", [".", "", "data", "data/labeled", "data/logs/in"])
def test_an_inbox_that_holds_or_lies_in_the_systems_own_folders_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inbox: str
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "INBOX_CLASSIFIER_DATA_DIR": "data", "INBOX_CLASSIFIER_INBOX": inbox}
    done = subprocess.run(
        [sys.executable, "-m", "inbox_classifier", "up", "--weights", "none"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    errors = [line for line in said.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in said, said
    if inbox:  # both paths named
        assert str(tmp_path) in errors[0] and "data" in errors[0], said
    assert not (tmp_path / "data" / "results.db").exists()


def test_the_layout_rule_accepts_an_inbox_beside_or_inside_the_data_dir(tmp_path: Path) -> None:
    for inbox in (tmp_path / "inbox", tmp_path / "data" / "inbox"):
        s = Settings(data_dir=tmp_path / "data", inbox=inbox)
        assert inbox_overlap(s) is None
    ledger_inside = Settings(
        data_dir=tmp_path / "data",
        inbox=tmp_path / "in",
        database_url=f"sqlite:///{tmp_path / 'in' / 'x.db'}",
    )
    assert "holds the ledger" in (inbox_overlap(ledger_inside) or "")


def test_a_watcher_never_reads_the_systems_own_files_even_where_the_inbox_holds_them(
    settings: Settings, session_factory  # type: ignore[no-untyped-def]
) -> None:
    """Started without `up`'s check (a role run by hand, or a layout made after start): the
    ledger, its WAL, models and logs under the inbox are skipped, not hashed."""
    wide = settings.model_copy(update={"inbox": settings.data_dir.parent})
    write_image(settings.data_dir / "models" / "looks-like.jpg", 1)
    write_image(settings.data_dir / "labeled" / "cat" / "copy.jpg", 3)
    real = settings.inbox / "real.jpg"
    with watching(wide):
        write_image(settings.data_dir / "models" / "written-later.jpg", 4)
        (settings.data_dir / "logs").mkdir(exist_ok=True)
        (settings.data_dir / "logs" / "worker.log").write_text("a log line\n")
        write_image(real, 2)
        wait_until(lambda: str(real) in _recorded(session_factory), 20, "the real image")
        time.sleep(0.5)
    recorded = _recorded(session_factory)
    assert list(recorded) == [str(real)], recorded
