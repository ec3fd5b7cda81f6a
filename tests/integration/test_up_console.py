"""What `up` shows on the terminal and what it assigns: the line filter on its own, the reader
threads on real child processes, the ports of the plan, then a real `inbox-classifier up` with
the test Redis, real images and a real resnet18, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract import events
from contract.settings import Settings
from db.models import ImageStatus
from inbox_classifier.cli_common import LOG_FORMAT
from inbox_classifier.console import Console, LineFilter, Tally, console_line, follow_output
from inbox_classifier.redis_server import free_port
from inbox_classifier.supervisor import METRICS_PORT_ENV, PortError, plan_children
from tests.helpers.images import write_images
from tests.helpers.pipeline import count, wait_until
from tests.helpers.procs import stop

BUSY = re.compile(
    r"^worker-cpu0: (\d+) images? in \d+\.\d s \(\d+\.\d img/s\): (\d+) classified, "
    r"(?:(\d+) rescored, )?(\d+) failed$"
)
UP_ARGS = ("--weights", "none", "--no-trainer", "--no-beat", "--no-web")
BANNER_TEXT = ("celery@", "classify-cpu0@", "[config]", "-------------- ", "[queues]", "[tasks]")


def formatted(level: int, logger: str, message: str) -> str:
    """``message`` as a child process writes it (LOG_FORMAT, the format every role logs in)."""
    record = logging.LogRecord(logger, level, __file__, 1, message, None, None)
    return logging.Formatter(LOG_FORMAT).format(record)


# --- the line filter ------------------------------------------------------------------------


def test_a_busy_period_is_read_from_its_event_not_its_sentence() -> None:
    from worker.classify.batch_stats import (
        BatchStats,  # the real event, so the two cannot drift apart
    )

    stats = BatchStats(images=120, failed=2, first_results=100, batches=4)
    stats.start()
    line = formatted(logging.INFO, events.EVENT_LOGGER, events.encode(stats.event()))
    tally = Tally()
    shown = LineFilter("worker-cpu0", Path("/x.log"), tally).feed(line)
    assert shown is not None and BUSY.match(shown), shown
    assert shown.startswith("worker-cpu0: 120 images in ")
    assert shown.endswith("): 100 classified, 18 rescored, 2 failed")
    assert (tally.classified, tally.rescored, tally.failed) == (100, 18, 2)
    # The worker's own sentence in its log says the same in words, and is not parsed.
    sentence = formatted(logging.INFO, "worker.classify.batching", stats.line())
    assert console_line("worker-cpu0", sentence) is None

    one = events.BusyPeriod(classified=0, rescored=0, failed=1, seconds=0.14, rate=7.1)
    assert console_line(
        "worker-gpu1", formatted(logging.INFO, events.EVENT_LOGGER, events.encode(one))
    ) == ("worker-gpu1: 1 image in 0.1 s (7.1 img/s): 0 classified, 1 failed")


def test_ready_promoted_and_rescoring_events_are_shown_and_up_says_ready_once() -> None:
    said: list[str] = []
    tally = Tally()
    tally.wait_for(["watcher", "worker-cpu0"], lambda: said.append("ready"))
    feed = LineFilter("watcher", Path("/x.log"), tally).feed
    ready = formatted(logging.INFO, events.EVENT_LOGGER, events.encode(events.Ready("w")))
    assert feed(ready) is None  # not a line of its own: `up` says ready once, for all
    assert feed(formatted(logging.INFO, events.EVENT_LOGGER, "ready {broken json")) is None
    assert said == []
    worker = LineFilter("worker-cpu0", Path("/x.log"), tally).feed
    worker(formatted(logging.INFO, events.EVENT_LOGGER, events.encode(events.Ready("w"))))
    worker(formatted(logging.INFO, events.EVENT_LOGGER, events.encode(events.Ready("w"))))
    assert said == ["ready"]
    promoted = events.Promoted("v3", 0.71, "v2", 0.66, 100)
    rescoring = events.Rescoring("v3", 41)
    trainer = LineFilter("trainer", Path("/x.log"), tally).feed
    assert trainer(formatted(logging.INFO, events.EVENT_LOGGER, events.encode(promoted))) == (
        "trainer: v3 promoted (0.66 → 0.71 on 100 held-out images)"
    )
    assert trainer(formatted(logging.INFO, events.EVENT_LOGGER, events.encode(rescoring))) == (
        "trainer: rescoring 41 images with v3"
    )


def test_warnings_and_errors_are_shown_info_and_banners_are_not() -> None:
    warning = formatted(logging.WARNING, "worker.classify.reconcile", "re-sent 3 stuck image(s)")
    assert console_line("worker-cpu0", warning) == (
        "worker-cpu0: WARNING worker.classify.reconcile: re-sent 3 stuck image(s)"
    )
    error = formatted(logging.ERROR, "watcher.service", "Redis is down")
    assert console_line("watcher", error) == "watcher: ERROR watcher.service: Redis is down"
    critical = formatted(logging.CRITICAL, "celery.worker", "Unrecoverable error")
    assert console_line("beat", critical) == "beat: CRITICAL celery.worker: Unrecoverable error"
    celery_style = "[2026-12-02 10:11:12,345: WARNING/MainProcess] consumer: Cannot connect"
    assert console_line("worker-cpu0", celery_style) == (
        "worker-cpu0: WARNING consumer: Cannot connect"
    )

    hidden = [
        formatted(logging.INFO, "celery.worker.consumer.connection", "Connected to redis://"),
        formatted(logging.INFO, "celery.beat", "Scheduler: Sending due task reconcile"),
        formatted(logging.INFO, "worker.tasks", "malloc arenas limited to 2"),
        formatted(logging.DEBUG, "worker.classify.batching", "anything"),
        "[2026-12-02 10:11:12,345: INFO/MainProcess] celery@host ready.",
        " -------------- celery@host v5.7.0 (recovery)",
        "--- ***** ----- ",
        "- ** ---------- [config]",
        "[tasks]",
        "  . inbox_classifier.classify",
        "Traceback (most recent call last):",
        "",
        "WARNING is a word a printed line may start with",
    ]
    for line in hidden:
        assert console_line("worker-cpu0", line) is None, line


def test_a_shown_records_traceback_stays_in_the_log_with_one_pointer() -> None:
    log_path = Path("/var/x/logs/worker-cpu0.log")
    lines = LineFilter("worker-cpu0", log_path)
    fed = [
        formatted(logging.INFO, "celery", "starting"),
        "  continuation of an INFO record",
        formatted(logging.ERROR, "worker.classify.batching", "batch of 4 failed"),
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "RuntimeError: boom",
        formatted(logging.INFO, "worker.classify.batching", "next"),
        "  more INFO continuation",
        formatted(
            logging.INFO,
            events.EVENT_LOGGER,
            events.encode(events.BusyPeriod(2, 0, 0, 0.5, 4.0)),
        ),
        "worker: Warm shutdown (MainProcess)",  # printed by Celery: no pointer after a busy line
    ]
    shown = [s for s in map(lines.feed, fed) if s is not None]
    assert shown == [
        "worker-cpu0: ERROR worker.classify.batching: batch of 4 failed",
        f"worker-cpu0:   (more in {log_path})",
        "worker-cpu0: 2 images in 0.5 s (4.0 img/s): 2 classified, 0 failed",
    ]


def test_a_closed_terminal_does_not_stop_the_console() -> None:
    stream = io.StringIO()
    stream.close()
    Console(stream).show("nobody reads this")  # no exception: the readers keep draining


# --- the reader threads, on real child processes --------------------------------------------

CHILD = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format=sys.argv[1])
    print(" -------------- celery@host v5.7.0", flush=True)
    logging.getLogger("worker.x").warning("disk nearly full (%s)", sys.argv[2])
    logging.getLogger("celery.worker").info("Connected to redis")
    sys.stdout.write("no newline at the end")
    """
)


def run_child(tag: str, log_path: Path, console: Console) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, LOG_FORMAT, tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    reader = follow_output("worker-cpu0", process.pid, process.stdout, log_path, console)
    assert process.wait(30) == 0
    reader.join(30)
    assert not reader.is_alive()


def test_output_goes_to_the_log_file_appended_across_restarts(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log_path = tmp_path / "logs" / "worker-cpu0.log"
    run_child("first", log_path, Console(terminal))
    run_child("second", log_path, Console(terminal))  # a restart: same file, appended

    assert terminal.getvalue().splitlines() == [
        "worker-cpu0: WARNING worker.x: disk nearly full (first)",
        "worker-cpu0: WARNING worker.x: disk nearly full (second)",
    ]
    logged = log_path.read_text()
    assert logged.count("-------------- celery@host") == 2
    assert logged.count(" INFO MainProcess celery.worker: Connected to redis") == 2
    assert logged.count("started (pid ") == 2
    assert "disk nearly full (first)" in logged and "disk nearly full (second)" in logged
    assert logged.endswith("no newline at the end\n")


# --- the plan: ports and environments -------------------------------------------------------


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_each_worker_gets_its_own_metrics_port_from_metrics_port_on(
    settings: Settings, no_gpus: None
) -> None:
    web_port = free_port()
    settings = settings.model_copy(update={"metrics_port": 9300, "web_port": web_port})
    children = plan_children(settings, 3, trainer=True, beat=True, web=True)
    by_name = {c.name: c for c in children}
    assert list(by_name) == [
        "watcher",
        "worker-cpu0",
        "worker-cpu1",
        "worker-cpu2",
        "trainer",
        "beat",
        "web",
    ]
    for i in range(3):
        worker = by_name[f"worker-cpu{i}"]
        assert worker.env[METRICS_PORT_ENV] == str(9300 + i)
        assert worker.url == f"http://127.0.0.1:{9300 + i}/metrics"
    for name in ("watcher", "trainer", "beat", "web"):
        assert by_name[name].env[METRICS_PORT_ENV] == "null"  # none of them serves metrics
    web = by_name["web"]
    assert web.args == ["serve", "--host", "127.0.0.1", "--port", str(web_port)]
    assert web.url == f"http://127.0.0.1:{web_port}" and web.note == ""


def test_without_metrics_port_up_picks_free_distinct_ports_and_moves_a_taken_web_port(
    settings: Settings, no_gpus: None
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        settings = settings.model_copy(update={"web_port": taken})
        children = {c.name: c for c in plan_children(settings, 2, False, False, web=True)}
    ports = {int(children[f"worker-cpu{i}"].env[METRICS_PORT_ENV]) for i in range(2)}
    web = children["web"]
    web_port = int(web.args[-1])
    assert len(ports) == 2 and web_port not in ports and web_port != taken
    assert web.note == f" (port {taken} is in use)"


def test_several_workers_per_gpu_each_pinned_to_its_gpu(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    settings = settings.model_copy(update={"workers_per_gpu": 2, "device": "auto"})
    workers = [c for c in plan_children(settings, None, False, False) if c.name != "watcher"]
    assert [(w.name, w.env["CUDA_VISIBLE_DEVICES"]) for w in workers] == [
        ("worker-gpu0-1", "0"),
        ("worker-gpu1-1", "1"),
        ("worker-gpu0-2", "0"),
        ("worker-gpu1-2", "1"),
    ]
    assert len({w.env[METRICS_PORT_ENV] for w in workers}) == 4  # each its own metrics port
    one = settings.model_copy(update={"workers_per_gpu": 1})
    names = [c.name for c in plan_children(one, None, False, False) if c.name != "watcher"]
    assert names == ["worker-gpu0", "worker-gpu1"]
    cpu = settings.model_copy(update={"device": "cpu"})
    names = [c.name for c in plan_children(cpu, None, False, False) if c.name != "watcher"]
    assert names == ["worker-cpu0"]  # DEVICE=cpu: the GPUs are not used


def test_metrics_ports_past_65535_are_refused(settings: Settings, no_gpus: None) -> None:
    settings = settings.model_copy(update={"metrics_port": 65535})
    with pytest.raises(PortError, match="past 65535"):
        plan_children(settings, 2, trainer=False, beat=False)


# --- the real thing -------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_up_shows_addresses_busy_periods_and_problems_and_logs_the_rest(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    env = settings.with_env()
    env["PYTHONUNBUFFERED"] = "1"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        up = subprocess.Popen(
            [sys.executable, "-m", "inbox_classifier", "up", *UP_ARGS],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def printed() -> str:
        return out_path.read_text(errors="replace")

    images = 6
    logs = settings.data_dir.resolve() / "logs"
    try:
        wait_until(lambda: "metrics: " in printed(), 60, "the metrics line\n" + printed())
        url = re.search(r"^metrics: worker-cpu0 (\S+)$", printed(), re.M)
        assert url, printed()

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url[1], timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(answers, 120, "the worker's metrics\n" + printed())
        staging = tmp_path / "staging"
        for path in write_images(staging, images):
            os.replace(path, settings.inbox / path.name)
        wait_until(lambda: count(session_factory, ImageStatus.DONE) == images, 120, "all done")

        def busy_total() -> int:
            return sum(int(m[1]) for line in printed().splitlines() if (m := BUSY.match(line)))

        wait_until(lambda: busy_total() == images, 60, "busy-period lines\n" + printed())

        def done_counted() -> float:
            with urllib.request.urlopen(url[1], timeout=5) as response:
                text = response.read().decode()
            assert "# TYPE inbox_classifier_batch_size histogram" in text
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "inbox_classifier_images_total"
                and sample.labels == {"outcome": "done", "kind": ""}
            )

        wait_until(lambda: done_counted() == images, 30, "the worker's count of done images")
    finally:
        # Ctrl-C on a terminal: SIGINT to the whole foreground process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGINT)
        code = stop(up, signal.SIGINT, timeout=90)
    shown = printed()
    assert code == 0, shown + err_path.read_text(errors="replace")

    lines = shown.splitlines()
    assert lines[0] == url[0]
    assert lines[1] == (
        f"watching {settings.inbox.resolve()}; results in {settings.db_url}; logs in {logs} "
        "(up.log, watcher.log, worker-cpu0.log)"
    )
    assert lines[-1] == (
        f"stopped: {images} images classified, 0 failed, while up ran; logs in {logs}"
    )
    assert "stopping (signal 2)..." in lines
    # Nothing went wrong, not even while stopping: the broker outlives the workers.
    assert not [line for line in lines if "(more in " in line or "WARNING" in line], shown
    busy = [line for line in lines if BUSY.match(line)]
    assert busy and sum(int(BUSY.match(line)[1]) for line in busy) == images  # type: ignore[index]
    assert any(line.startswith("ready in ") for line in lines), shown
    terminal = shown + err_path.read_text(errors="replace")
    for text in BANNER_TEXT:
        assert text not in terminal, text
    assert " INFO " not in terminal and "Connected to redis" not in terminal

    worker_log = (logs / "worker-cpu0.log").read_text(errors="replace")
    assert "-------------- classify-cpu0@" in worker_log and "[config]" in worker_log  # banner
    assert " INFO " in worker_log and "Connected to redis" in worker_log
    assert "image(s) (0 failed) in" in worker_log  # the busy period's full line
    assert " INFO " in (logs / "watcher.log").read_text(errors="replace")
    assert "started worker-cpu0 (pid " in (logs / "up.log").read_text(errors="replace")
