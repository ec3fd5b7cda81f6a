"""`up` supervises every child, its private Redis included: a kill -9 of Redis mid-burst is
reaped, said on the terminal with how it ended, and healed; the queue moves again and every
image is done exactly once. A full disk is named on the terminal, waited out without a crash
loop or a failed row, and the stop summary counts from the ledger."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from contract.settings import Settings
from db.engine import make_engine, make_sessionmaker
from inbox_classifier.redis_server import free_port
from tests.helpers.faults import assert_exactly_once, small_filesystem, status_counts
from tests.helpers.images import write_images
from tests.helpers.pipeline import wait_until


def _up(settings: Settings, out: Path) -> subprocess.Popen[bytes]:
    env = settings.with_env()
    env["PYTHONUNBUFFERED"] = "1"
    with open(out, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "inbox_classifier", "up", "--no-trainer", "--no-web"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _redis_child(up: subprocess.Popen[bytes]) -> psutil.Process | None:
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            if "redis-server" in " ".join(child.cmdline()) and child.status() != "zombie":
                return child
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_redis_killed_mid_burst_is_restarted_and_every_image_is_done_once(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(
        update={
            "redis_url": None,  # `up` starts and supervises its own
            "web_port": free_port(),
            "reconcile_interval_s": 2.0,
            "requeue_after_s": 10.0,
            "batch_size": 8,
            "files_per_message": 4,
        }
    )
    out = tmp_path / "up.out"
    up = _up(s, out)
    engine = make_engine(s.db_url)
    sessions = make_sessionmaker(engine)
    try:
        wait_until(lambda: "ready in" in out.read_text(errors="replace"), 120, "up's ready line")
        total = 240
        write_images(s.inbox, total)
        wait_until(lambda: status_counts(sessions)["done"] >= 20, 120, "the burst under way")
        redis = _redis_child(up)
        assert redis is not None
        redis.kill()
        killed_at = time.monotonic()
        done_at_kill = status_counts(sessions)["done"]
        assert done_at_kill < total, "the burst ended before the kill: make it larger"
        wait_until(
            lambda: "redis was killed by SIGKILL" in out.read_text(errors="replace"),
            30,
            "the death said on the terminal",
        )
        wait_until(
            lambda: (child := _redis_child(up)) is not None and child.pid != redis.pid,
            30,
            "a new redis-server",
        )
        wait_until(
            lambda: status_counts(sessions)["done"] > done_at_kill + 8, 120, "the queue moving"
        )
        moving_after = time.monotonic() - killed_at
        wait_until(lambda: status_counts(sessions)["done"] == total, 120, "every image done")
        print(f"kill -9 of redis -> queue moving again: {moving_after:.1f} s")
        assert_exactly_once(sessions, total)
        said = out.read_text(errors="replace")
        assert "restarted redis on" in said, said
        assert not psutil.pid_exists(redis.pid) or psutil.Process(redis.pid).status() != (
            psutil.STATUS_ZOMBIE
        ), "the killed redis was left a zombie"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_is_named_waited_out_and_every_image_is_done_once_after(
    settings: Settings, tmp_path: Path
) -> None:
    data_dir = tmp_path / "small"
    with small_filesystem(data_dir, "64m") as how:
        if how != "tmpfs":
            pytest.skip("needs root to mount a small tmpfs for the data dir")
        s = settings.model_copy(
            update={
                "data_dir": data_dir,
                "redis_url": None,
                "web_port": free_port(),
                "reconcile_interval_s": 2.0,
                "requeue_after_s": 10.0,
                "batch_size": 8,
                "files_per_message": 4,
            }
        )
        from db import migrate

        migrate.upgrade(s.db_url)
        out = tmp_path / "up.out"
        up = _up(s, out)
        engine = make_engine(s.db_url)
        sessions = make_sessionmaker(engine)
        filler = data_dir / "filler"
        try:
            wait_until(lambda: "ready in" in out.read_text(errors="replace"), 120, "ready")
            total = 200
            write_images(s.inbox, total)
            wait_until(lambda: status_counts(sessions)["done"] >= 10, 120, "the burst under way")
            _fill(filler)
            wait_until(
                lambda: "disk full at" in out.read_text(errors="replace"), 30, "the disk named"
            )
            time.sleep(8)  # full for a while: nothing may crash-loop meanwhile
            said = out.read_text(errors="replace")
            filler.unlink()
            wait_until(
                lambda: "disk has room again" in out.read_text(errors="replace"), 30, "room"
            )
            wait_until(lambda: status_counts(sessions)["done"] == total, 180, "every image")
            assert_exactly_once(sessions, total)
            assert status_counts(sessions)["failed"] == 0
            assert "Logging error" not in said and "Traceback" not in said, said
            assert said.count("restarting in") <= 3, said
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(90)
            except subprocess.TimeoutExpired:
                up.kill()
            engine.dispose()
            filler.unlink(missing_ok=True)
        said = out.read_text(errors="replace")
        assert f"stopped: {total} images classified, 0 failed" in said, said[-2000:]


def _fill(path: Path) -> None:
    """Write ``path`` until the file system says it is full."""
    block = b"\0" * (1 << 20)
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass
