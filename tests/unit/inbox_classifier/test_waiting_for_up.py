"""A command that needs `up`'s Redis waits for an `up` that is still starting (its data-dir lock is
held, its Redis URL not written yet), saying so, instead of "no Redis"; without an `up` it says
at once that none runs."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import click
import pytest

from contract.settings import Settings
from inbox_classifier.cli_common import require_broker


def test_a_starting_up_is_waited_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None)
    lock = os.open(tmp_path / "up.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # `up` holds it from its first moment

    def redis_comes_up() -> None:
        time.sleep(0.8)
        (tmp_path / "redis").mkdir()
        (tmp_path / "redis" / "redis.url").write_text("redis://127.0.0.1:6399/0")

    threading.Thread(target=redis_comes_up).start()
    try:
        found = require_broker(settings, wait_s=10)
    finally:
        os.close(lock)
    assert found.redis_url == "redis://127.0.0.1:6399/0"
    assert "`up` is starting" in capsys.readouterr().err


def test_without_an_up_it_says_so_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(click.ClickException, match="no Redis"):
        require_broker(Settings(data_dir=tmp_path, redis_url=None), wait_s=10)
    assert time.monotonic() - started < 2
