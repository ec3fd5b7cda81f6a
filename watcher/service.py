"""The watcher process: observer + rescans feed the stability tracker; one processing thread
hashes completed files, records them (one transaction per burst) and enqueues them.

Nothing here may kill the process: a database or Redis failure is logged and retried with
backoff, and the ledger keeps every recorded file `queued` until a worker has classified it,
so the reconciler can send it again whatever happens to this process or to Redis.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import SeenFile, WorkItem, known_paths, mark_enqueued, record_files
from inbox_classifier.retry import backoff_delays
from inbox_classifier.settings import Settings
from watcher.events import InboxHandler
from watcher.filters import ignored_name, skip_reason
from watcher.hashing import hash_file
from watcher.stability import FileState, StabilityTracker
from worker.app import make_celery, send_classify

log = logging.getLogger(__name__)

BURST = 512  # files recorded in one transaction
RETRY_CAP_S = 30.0


class Watcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.inbox.mkdir(parents=True, exist_ok=True)
        self.inbox = Path(os.path.abspath(settings.inbox))
        self.inbox_real = Path(os.path.realpath(settings.inbox))
        self.tracker = StabilityTracker(settings.quiet_period_s)
        self._new_dirs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._engine = make_engine(settings.db_url)
        self._sessions: sessionmaker[Session] = make_sessionmaker(self._engine)
        self._app: Celery = make_celery(settings)
        self._unrecorded: list[SeenFile] = []  # hashed, but the DB was unavailable
        self._unsent: list[WorkItem] = []  # recorded, but Redis was unavailable
        self._failures = 0
        self._retry_at = 0.0
        self.recorded = 0
        self.sent = 0

    # --- finding files -------------------------------------------------------------------------

    def _observer(self) -> BaseObserver:
        if self.settings.polling:
            return PollingObserver(timeout=self.settings.poll_interval_s)
        return Observer()

    def rescan(self, root: Path | None = None) -> int:
        """Walk ``root`` (default: the inbox); track files the ledger does not know as they are.
        Returns how many were new or changed."""
        found: list[tuple[str, os.stat_result]] = []
        for path in _walk(root or self.inbox, self.inbox):
            try:
                found.append((path, os.stat(path)))
            except OSError:
                continue
        known: dict[str, tuple[int, int]] = {}
        for start in range(0, len(found), 5000):
            chunk = [p for p, _ in found[start : start + 5000]]
            with transaction(self._sessions) as session:
                known.update(known_paths(session, chunk))
        now_ns = time.time_ns()
        quiet_ns = int(self.settings.quiet_period_s * 1e9)
        fresh = 0
        for path, info in found:
            if known.get(path) == (info.st_size, info.st_mtime_ns):
                continue
            # Untouched for a quiet period already: complete (it was there before we started).
            old = now_ns - info.st_mtime_ns >= quiet_ns
            self.tracker.notify(path, FileState.COMPLETE if old else FileState.SEEN)
            fresh += 1
        return fresh

    # --- the processing loop -------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        observer = self._observer()
        handler = InboxHandler(
            self.tracker, self._new_dirs, close_events=_has_close_events(observer)
        )
        observer.schedule(handler, str(self.inbox), recursive=True)
        observer.start()
        log.info("watching %s (%s)", self.inbox, type(observer).__name__)
        next_rescan = 0.0
        poll = min(0.1, max(0.01, self.settings.quiet_period_s / 4))
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_rescan:
                    self._guarded(self.rescan, "rescanning the inbox")
                    next_rescan = now + self.settings.rescan_interval_s
                    if ready is not None:
                        ready.set()
                while not self._new_dirs.empty():
                    folder = Path(self._new_dirs.get())
                    self._guarded(partial(self.rescan, folder), f"scanning {folder}")
                self.process(self.tracker.take_ready(BURST))
                if self.tracker.pending() == 0 and not self._unsent and not self._unrecorded:
                    self.tracker.wait(timeout=1.0)
                else:
                    self.tracker.wait(timeout=poll)
        finally:
            observer.stop()
            observer.join(timeout=10)
            self._engine.dispose()
            self._app.close()
            log.info("watcher stopped (recorded %d, sent %d)", self.recorded, self.sent)

    def process(self, paths: list[str]) -> None:
        seen: list[SeenFile] = []
        for path in paths:
            reason = skip_reason(Path(path), self.inbox_real)
            if reason:
                if reason != "vanished":
                    log.debug("ignoring %s: %s", path, reason)
                continue
            hashed = hash_file(path)
            if hashed is None:
                if os.path.exists(path):
                    self.tracker.notify(path, FileState.SEEN)  # still changing: look again
                continue
            seen.append(hashed)
        self._unrecorded.extend(seen)
        if (self._unrecorded or self._unsent) and time.monotonic() >= self._retry_at:
            self._flush()

    def _flush(self) -> None:
        try:
            if self._unrecorded:
                batch = self._unrecorded
                with transaction(self._sessions) as session:
                    items = record_files(session, batch)
                self._unrecorded = []
                self.recorded += len(batch)
                self._unsent.extend(items)
            if self._unsent:
                items = self._unsent
                send_classify(self._app, items, self.settings.files_per_message)
                self._unsent = []
                self.sent += len(items)
                with transaction(self._sessions) as session:
                    mark_enqueued(session, [i.sha256 for i in items])
            self._failures = 0
        except Exception as exc:
            self._failures += 1
            delay = backoff_delays(2, min(RETRY_CAP_S, 0.5 * 2**self._failures), RETRY_CAP_S)[0]
            delay = max(delay, 0.2)
            self._retry_at = time.monotonic() + delay
            log.error(
                "could not record/enqueue %d file(s): %s: %s; retrying in %.1fs "
                "(recorded rows stay queued in the ledger)",
                len(self._unrecorded) + len(self._unsent),
                type(exc).__name__,
                exc,
                delay,
            )

    def _guarded(self, func: Callable[[], object], what: str) -> None:
        try:
            func()
        except Exception:
            log.exception("error while %s; will try again", what)


def _has_close_events(observer: BaseObserver) -> bool:
    """Only the inotify observer reports close-after-write."""
    return type(observer).__name__ == "InotifyObserver"


def _walk(root: Path, inbox: Path) -> list[str]:
    """Regular files and symlinks under ``root``, skipping hidden/temp names and not
    descending into symlinked directories."""
    out: list[str] = []
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if ignored_name(Path(entry.path), inbox):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    out.append(entry.path)
            except OSError:
                continue
    return out


def run_watcher(
    settings: Settings, stop: threading.Event, ready: threading.Event | None = None
) -> None:
    """Run until ``stop`` is set. ``ready`` is set once the first rescan is done."""
    Watcher(settings).run(stop, ready)
