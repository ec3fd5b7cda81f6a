"""End to end on real parts: the `watch` and `worker` roles (and `up`) as real processes, a
real redis-server, a real SQLite ledger, real JPEG files and a real torchvision resnet18."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImagePath, ImageStatus, Prediction
from tests.helpers.images import write_image, write_images
from tests.helpers.pipeline import count, wait_until
from tests.helpers.procs import cli, running, stop

pytestmark = pytest.mark.timeout(300)


def drop(staging: Path, inbox: Path, paths: list[Path]) -> None:
    """Move finished files into the inbox, as a well-behaved producer does."""
    for path in paths:
        os.replace(path, inbox / path.name)


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def test_files_dropped_while_running_and_while_watcher_down_are_done_exactly_once(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    first = write_images(staging, 50)
    second = write_images(staging, 20, start_seed=1000)
    twin = staging / "twin-of-0.jpg"
    twin.write_bytes(first[0].read_bytes())  # same content, another name
    logs = tmp_path / "logs"
    logs.mkdir()
    with running(settings, "worker", log=logs / "worker.log"):
        watcher = cli(settings, "watch", log=logs / "watch1.log")
        try:
            time.sleep(1.5)  # let it start watching
            drop(staging, settings.inbox, [*first, twin])
            wait_until(
                lambda: count(session_factory, ImageStatus.DONE) == 50,
                120,
                "50 done\n" + _log_tail(logs / "worker.log"),
            )
        finally:
            assert stop(watcher) == 0, _log_tail(logs / "watch1.log")

        drop(staging, settings.inbox, second)  # nobody is watching now
        time.sleep(0.5)
        assert count(session_factory) == 50
        with running(settings, "watch", log=logs / "watch2.log"):
            wait_until(
                lambda: count(session_factory, ImageStatus.DONE) == 70,
                120,
                "70 done\n" + _log_tail(logs / "watch2.log"),
            )
            time.sleep(1.0)  # anything sent twice would land now

    with transaction(session_factory) as session:
        assert session.execute(select(func.count()).select_from(Prediction)).scalar_one() == 70
        assert session.execute(select(func.count()).select_from(ImagePath)).scalar_one() == 71
        per_image = session.execute(
            select(Prediction.image_id, func.count()).group_by(Prediction.image_id)
        ).all()
        assert all(n == 1 for _, n in per_image)
        twin_image = session.scalars(
            select(Image).join(ImagePath).where(ImagePath.path == str(settings.inbox / twin.name))
        ).one()
        assert len(twin_image.paths) == 2 and twin_image.status == ImageStatus.DONE


def test_slowly_written_file_is_read_only_when_complete(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    source = write_image(tmp_path / "big.jpg", seed=7, size=(800, 600))
    data = source.read_bytes()
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        running(settings, "worker", log=logs / "worker.log"),
        running(settings, "watch", log=logs / "watch.log"),
    ):
        time.sleep(1.5)
        with open(settings.inbox / "slow.jpg", "wb") as handle:
            for start in range(0, len(data), len(data) // 5 + 1):
                handle.write(data[start : start + len(data) // 5 + 1])
                handle.flush()
                time.sleep(0.4)
        wait_until(
            lambda: count(session_factory, ImageStatus.DONE, ImageStatus.FAILED) == 1,
            60,
            "the slow file settled\n" + _log_tail(logs / "watch.log"),
        )
    with transaction(session_factory) as session:
        image = session.scalars(select(Image)).one()
        assert image.status == ImageStatus.DONE, image.error
        assert image.size == len(data)
        assert count(session_factory) == 1


def test_up_runs_everything_and_stops_cleanly_on_ctrl_c(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"redis_url": None})  # `up` starts its own Redis
    logs = tmp_path / "logs"
    logs.mkdir()
    up = cli(own, "up", "--no-trainer", log=logs / "up.log")
    try:
        wait_until(
            lambda: (own.data_dir / "redis" / "redis.url").exists(),
            60,
            "private redis\n" + _log_tail(logs / "up.log"),
        )
        time.sleep(2.0)
        write_images(tmp_path / "staging", 10)
        drop(tmp_path / "staging", own.inbox, sorted((tmp_path / "staging").iterdir()))
        wait_until(
            lambda: count(session_factory, ImageStatus.DONE) == 10,
            180,
            "10 done\n" + _log_tail(logs / "up.log"),
        )
    finally:
        code = stop(up, signal.SIGINT, timeout=90)
    assert code == 0, _log_tail(logs / "up.log")
    assert not (own.data_dir / "redis" / "redis.url").exists()
    log = _log_tail(logs / "up.log")
    assert "stopped" in log
