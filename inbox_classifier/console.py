"""What `up` shows on the terminal, and where everything else goes.

Each child's stdout and stderr (one pipe) are copied, line by line, to its own log file
(``<data_dir>/logs/<child>.log``, appended across restarts) by a reader thread per process
start. The terminal gets only what a person wants: one short line per busy period of a worker,
every WARNING, ERROR and CRITICAL record of any child, and the supervisor's own messages.
Celery's banner, INFO records and the reconciler's ticks stay in the log files.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from contract import events
from inbox_classifier.cli_common import LOG_FORMAT

SHOWN_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})

# A record as LOG_FORMAT writes it ("2026-12-02 10:11:12,345 INFO MainProcess worker.x: ..."),
# and as Celery's own format does ("[2026-12-02 10:11:12,345: INFO/MainProcess] ...").
_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) \S+ (?P<logger>\S+): "
    r"(?P<message>.*)$"
)
_CELERY_RECORD = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (?P<level>[A-Z]+)/[^\]]*\] (?P<message>.*)$"
)


@dataclass(frozen=True)
class Record:
    level: str
    logger: str  # empty in Celery's format
    message: str


def parse_record(line: str) -> Record | None:
    """The log record that starts on ``line``, or None (a banner line, a traceback's
    continuation, anything printed)."""
    match = _RECORD.match(line)
    if match:
        return Record(match["level"], match["logger"], match["message"])
    match = _CELERY_RECORD.match(line)
    if match:
        return Record(match["level"], "", match["message"])
    # What a command says before it logs anything (click's errors, the settings checks).
    for prefix, level in _CLI_MESSAGES:
        if line.startswith(prefix):
            return Record(level, "", line[len(prefix) :])
    return None


_CLI_MESSAGES = (("Error: ", "ERROR"), ("error: ", "ERROR"), ("warning: ", "WARNING"))


class Tally:
    """What the children reported while `up` ran, from their events: images classified (a
    first result), rescored and failed (what its stop message reports), and which children
    are ready (`up` says "ready" once every one it waits for is)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.classified = 0
        self.rescored = 0
        self.failed = 0
        self._waiting: set[str] = set()
        self._on_ready: Callable[[], None] | None = None

    def add(self, period: events.BusyPeriod) -> None:
        with self._lock:
            self.classified += period.classified
            self.rescored += period.rescored
            self.failed += period.failed

    def wait_for(self, children: Iterable[str], on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` once each of ``children`` has reported :class:`events.Ready`."""
        with self._lock:
            self._waiting = set(children)
            self._on_ready = on_ready

    def ready(self, child: str) -> None:
        with self._lock:
            self._waiting.discard(child)
            done = not self._waiting and self._on_ready is not None
            on_ready, self._on_ready = (self._on_ready, None) if done else (None, self._on_ready)
        if on_ready is not None:
            on_ready()


def render_event(child: str, event: events.Event, tally: Tally | None = None) -> str | None:
    """The terminal line for one event of ``child``, or None (it only updates the tally)."""
    match event:
        case events.BusyPeriod():
            if tally is not None:
                tally.add(event)
            settled = event.classified + event.rescored + event.failed
            parts = [f"{event.classified} classified"]
            if event.rescored:
                parts.append(f"{event.rescored} rescored")
            parts.append(f"{event.failed} failed")
            return (
                f"{child}: {_images(settled)} in {event.seconds:.1f} s "
                f"({event.rate:.1f} img/s): {', '.join(parts)}"
            )
        case events.Ready():
            if tally is not None:
                tally.ready(child)
            return None
        case events.Promoted():
            line = f"{child}: {event.version} promoted"
            if event.accuracy is not None:
                before = (
                    "" if event.previous_accuracy is None else f"{event.previous_accuracy:.2f} → "
                )
                line += f" ({before}{event.accuracy:.2f} on {event.images} held-out images)"
            return line
        case events.Rescoring():
            return f"{child}: rescoring {_images(event.images)} with {event.version}"
        case events.RunStarted():
            why = {
                "labels": "enough new labels",
                "schedule": "on its schedule",
                "manual": "asked for",
            }.get(event.trigger, event.trigger)
            return (
                f"{child}: run {event.run_id} started ({why}): {_images(event.images)}, "
                f"{event.classes} classes"
            )
        case events.RunEnded():
            return f"{child}: run {event.run_id} {event.status}: {event.message}"
    return None


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def render(child: str, record: Record, tally: Tally | None = None) -> str | None:
    """What the terminal shows for one record of ``child``, or None (log file only)."""
    if record.logger == events.EVENT_LOGGER:
        event = events.decode(record.message)
        return None if event is None else render_event(child, event, tally)
    if record.level in SHOWN_LEVELS:
        source = f" {record.logger}:" if record.logger else ""
        return f"{child}: {record.level}{source} {record.message}"
    return None


def console_line(child: str, line: str) -> str | None:
    """What the terminal shows for one line of ``child``'s output, or None."""
    record = parse_record(line)
    return None if record is None else render(child, record)


class LineFilter:
    """:func:`console_line` over a child's output, line after line. The continuation of a shown
    warning or error (a traceback) stays in the log file; the terminal gets one pointer to it."""

    def __init__(self, child: str, log_path: Path, tally: Tally | None = None) -> None:
        self._child = child
        self._log_path = log_path
        self._tally = tally
        self._after_problem = False
        self._pointed = False

    def feed(self, line: str) -> str | None:
        record = parse_record(line)
        if record is not None:
            shown = render(self._child, record, self._tally)
            # Only a problem's continuation is worth a pointer (an event's line has none; what
            # Celery prints after it, e.g. "worker: Warm shutdown", is not its traceback).
            self._after_problem = shown is not None and record.level in SHOWN_LEVELS
            self._pointed = False
            return shown
        if self._after_problem and not self._pointed and line.strip():
            self._pointed = True
            return f"{self._child}:   (more in {self._log_path})"
        return None


class Console:
    """The terminal, shared by the reader threads and the supervisor's logging: whole lines,
    never interleaved."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        # Reentrant: the supervisor logs from its signal handler, which may interrupt a write.
        self._lock = threading.RLock()

    def show(self, text: str) -> None:
        # The terminal may be gone (closed, a broken pipe): the reader threads must still
        # drain the children's pipes, or the children would block on a full pipe.
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._stream.write(text + "\n")
            self._stream.flush()


def follow_output(
    child: str,
    pid: int,
    stream: IO[bytes],
    log_path: Path,
    console: Console,
    tally: Tally | None = None,
) -> threading.Thread:
    """Start a daemon thread that copies ``stream`` (the stdout+stderr of ``child``, process
    ``pid``) to ``log_path`` and what :class:`LineFilter` keeps to ``console``, until the
    process closes it."""

    def run() -> None:
        line_filter = LineFilter(child, log_path, tally)
        log_file = _open_log(log_path)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        _append(log_file, f"--- {stamp} {child} started (pid {pid}) ---\n".encode())
        with stream:
            for raw in iter(stream.readline, b""):
                _append(log_file, raw if raw.endswith(b"\n") else raw + b"\n")
                shown = line_filter.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
                if shown is not None:
                    console.show(shown)
        if log_file is not None:
            log_file.close()

    thread = threading.Thread(target=run, name=f"output-{child}", daemon=True)
    thread.start()
    return thread


def _open_log(path: Path) -> IO[bytes] | None:
    # Unbuffered binary appends of whole lines: line-buffered, and a restarted child appends
    # to what the previous process wrote.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab", buffering=0)
    except OSError:
        return None


def _append(log_file: IO[bytes] | None, data: bytes) -> None:
    # A log file that cannot be written (disk full) must not stop the pipe being drained.
    if log_file is not None:
        with contextlib.suppress(OSError):
            log_file.write(data)


class _ConsoleHandler(logging.Handler):
    """The supervisor's own records on the terminal: its messages (logger ``up``) from INFO
    on, anything else (migrations, Redis) only from WARNING on; no tracebacks (those go to the
    supervisor's log file)."""

    def __init__(self, console: Console, own_logger: str) -> None:
        super().__init__(logging.INFO)
        self._console = console
        self._own = own_logger

    def emit(self, record: logging.LogRecord) -> None:
        own = record.name == self._own
        if not own and record.levelno < logging.WARNING:
            return
        try:
            message = record.getMessage()
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            message = (
                f"{record.levelname}: {message}"
                if own
                else (f"{record.levelname} {record.name}: {message}")
            )
        self._console.show(message)


class _QuietFileHandler(logging.FileHandler):
    """A log file that cannot be written (the disk is full) loses those records quietly: the
    terminal still shows what matters (the disk's state included), without the "--- Logging
    error ---" traceback logging prints for every record."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def route_supervisor_logging(console: Console, log_path: Path, own_logger: str) -> None:
    """Send this process's log records to ``log_path`` (all of them) and to ``console`` (what
    :class:`_ConsoleHandler` keeps), instead of stderr."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = _QuietFileHandler(log_path, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(file_handler)
    root.addHandler(_ConsoleHandler(console, own_logger))
