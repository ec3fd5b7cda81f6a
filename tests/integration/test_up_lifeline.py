"""`up` under hard kills and bad settings: every child dies with it (SIGKILL included), a second
`up` on the same data dir is refused while the first or its orphans live, and settings that
cannot work stop a command at once with exit status 2 and one line naming the variable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from contract.settings import Settings
from inbox_classifier.lifeline import dies_with_parent
from inbox_classifier.redis_server import free_port
from tests.helpers.pipeline import wait_until

UP = (sys.executable, "-m", "inbox_classifier", "up", "--weights", "none")


def _up(settings: Settings, *args: str, out: Path, **env: str) -> subprocess.Popen[bytes]:
    child_env = settings.with_env()
    child_env.update(env, PYTHONUNBUFFERED="1")
    with open(out, "ab") as handle:
        return subprocess.Popen(
            [*UP, *args],
            env=child_env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _own_redis(settings: Settings) -> Settings:
    """No --redis-url: `up` starts its private Redis, which must die with it too."""
    return settings.model_copy(update={"redis_url": None, "web_port": free_port()})


@pytest.mark.timeout(240)
def test_sigkill_of_up_leaves_no_child_alive_and_a_second_up_is_refused_meanwhile(
    settings: Settings, tmp_path: Path
) -> None:
    s = _own_redis(settings)
    out = tmp_path / "up.out"
    up = _up(s, out=out)
    try:
        expected = {"watch", "classify", "train", "beat", "serve", "redis-server"}

        def children() -> list[psutil.Process]:
            return psutil.Process(up.pid).children(recursive=True)

        def all_started() -> bool:
            names = " ".join(" ".join(c.cmdline()) for c in children())
            return all(word in names for word in expected)

        wait_until(all_started, 90, "every child started\n" + out.read_text(errors="replace"))
        wait_until(
            lambda: "web: http" in out.read_text(errors="replace"), 30, "the web line"
        )
        pids = children()

        second_out = tmp_path / "second.out"
        second = _up(s, out=second_out)
        assert second.wait(60) == 2
        said = second_out.read_text(errors="replace")
        assert "another `up` is running on" in said and f"pid {up.pid}" in said, said
        assert "Traceback" not in said
    finally:
        up.kill()  # SIGKILL: no handler, no cleanup in `up`
        up.wait()
    _gone, alive = psutil.wait_procs(pids, timeout=15)
    assert not alive, [" ".join(p.cmdline()) for p in alive]

    # Nothing holds the data dir now: a new `up` starts and stops cleanly.
    third_out = tmp_path / "third.out"
    third = _up(s, "--no-trainer", "--no-beat", "--no-web", out=third_out)
    try:
        wait_until(lambda: "metrics: " in third_out.read_text(errors="replace"), 90, "restart")
    finally:
        third.send_signal(signal.SIGINT)
        assert third.wait(90) == 0, third_out.read_text(errors="replace")


def test_the_parent_death_signal_reaches_a_grandchild_whose_parent_was_killed(
    tmp_path: Path,
) -> None:
    """dies_with_parent on its own: a parent starts `sleep` with it, then is SIGKILLed."""
    script = (
        "import subprocess, sys, time\n"
        "from inbox_classifier.lifeline import dies_with_parent\n"
        "child = subprocess.Popen(['sleep', '300'], preexec_fn=dies_with_parent(),"
        " start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    sleeper = psutil.Process(int(parent.stdout.readline()))
    assert dies_with_parent() is not None
    parent.kill()
    parent.wait()
    sleeper.wait(10)  # raises psutil.TimeoutExpired if it outlived its parent
    assert not sleeper.is_running()


@pytest.mark.timeout(180)
def test_a_child_refused_for_its_settings_stops_up_instead_of_restarting(
    settings: Settings, tmp_path: Path
) -> None:
    """DEVICE=cuda where a GPU id is configured but CUDA does not work: `up` cannot tell
    without touching CUDA, the worker can; it exits 2 and `up` stops with 2."""
    out = tmp_path / "up.out"
    s = settings.model_copy(update={"device": "cuda"})
    up = _up(s, "--no-trainer", "--no-beat", "--no-web", out=out, CUDA_VISIBLE_DEVICES="0")
    try:
        code = up.wait(150)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    said = out.read_text(errors="replace")
    assert code == 2, said
    assert "INBOX_CLASSIFIER_DEVICE=cuda: CUDA is not available" in said
    assert "worker-gpu0 cannot run with these settings" in said
    assert "restarting in" not in said


def _run(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = settings.with_env()
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "inbox_classifier", *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (("--workers", "-1"), {}, "'--workers': -1 is not in the range x>=1"),
        ((), {"INBOX_CLASSIFIER_DEVICE": "quantum"}, "INBOX_CLASSIFIER_DEVICE=quantum: use auto"),
        ((), {"INBOX_CLASSIFIER_REDIS_URL": "notaurl"}, "INBOX_CLASSIFIER_REDIS_URL=notaurl: "),
        ((), {"INBOX_CLASSIFIER_REDIS_URL": "redis://127.0.0.1:1/0"}, "no Redis answers"),
        ((), {"INBOX_CLASSIFIER_DATABASE_URL": "garbage"}, "not a database URL"),
        (
            (),
            {"INBOX_CLASSIFIER_DATABASE_URL": "postgresql+asyncpg://u@h/d"},
            "its driver is not installed",
        ),
        ((), {"INBOX_CLASSIFIER_DATABASE_URL": "sqlite:////proc/no/r.db"}, "cannot create"),
        ((), {"INBOX_CLASSIFIER_WEB_HOST": "0.0.0.0"}, "needs a token"),
        ((), {"INBOX_CLASSIFIER_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}, "no NVIDIA GPU"),
        ((), {"INBOX_CLASSIFIER_INBOX": "FILE"}, "INBOX_CLASSIFIER_INBOX="),
        ((), {"INBOX_CLASSIFIER_DATA_DIR": "FILE"}, "is a file, not a folder"),
        ((), {"INBOX_CLASSIFIER_LABELED_DIR": "FILE"}, "INBOX_CLASSIFIER_LABELED_DIR="),
    ],
)
def test_up_refuses_settings_that_cannot_work_with_one_line(
    settings: Settings, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    env = {k: (str(a_file) if v == "FILE" else v) for k, v in env.items()}
    started = time.monotonic()
    result = _run(settings, "up", "--weights", "none", *args, **env)
    took = time.monotonic() - started
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert said in text, text
    assert "Traceback" not in text
    assert len([line for line in text.splitlines() if line.startswith(("Error", "error"))]) == 1
    assert took < 30


def test_a_misspelled_variable_is_named_with_the_closest_setting(settings: Settings) -> None:
    result = _run(settings, "status", INBOX_CLASSIFIER_BATCHSIZE="64")
    assert (
        "warning: INBOX_CLASSIFIER_BATCHSIZE is not a setting and is ignored; did you mean "
        "INBOX_CLASSIFIER_BATCH_SIZE?"
    ) in result.stderr
