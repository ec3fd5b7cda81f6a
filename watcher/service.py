"""The watcher process. Four threads, one job each:

- the watchdog observer: events onto a queue, no I/O;
- the scanner: a full rescan at start and every ``rescan_interval_s`` (files dropped while the
  watcher was down, events lost to an inotify overflow); files the ledger already has with the
  same size and mtime are skipped without hashing;
- the processor: feeds the stability tracker, hashes complete files (on ``HASH_THREADS``
  threads, or ``HASH_PROCESSES`` processes: :mod:`watcher.hashers`), records each burst of
  them in one transaction;
- the publisher: sends recorded items to Redis, several per message, then marks them enqueued.

The caller's thread starts them, restarts the observer should it die, and stops them all.

Nothing here may kill the process: a database or Redis failure is logged and retried with
capped exponential backoff, and a recorded row stays `queued` until a worker has classified
it, so the reconciler can send it again whatever happens to this process or to Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from broker.app import make_celery
from contract import events
from contract.backoff import Backoff
from contract.chunks import chunked
from contract.layout import own_places
from contract.paths import shown
from contract.records import SeenFile
from contract.settings import Settings
from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import known_paths
from objectstore.inbox import store_for
from watcher.bucket import watch_bucket
from watcher.events import EventQueue, Kind
from watcher.filters import Scope, Signature, Skip, inspect, walk
from watcher.hashers import Hashers
from watcher.hashing import ChangedWhileReading, NotHashable
from watcher.observing import KeptObserver
from watcher.publisher import Publisher
from watcher.recorder import Recorder
from watcher.stability import StabilityTracker
from watcher.stats import StageClock
from watcher.unfinished import UnfinishedFiles

log = logging.getLogger(__name__)

BURST = 2048  # most files hashed and recorded in one transaction
KNOWN_CHUNK = 2000  # paths per known_paths lookup during a rescan
HEALTH_CHECK_S = 1.0  # how often the observer's threads are checked
JOIN_TIMEOUT_S = 30.0


class Watcher:
    """One watcher: ``run`` it once, on any thread, until ``stop`` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Absolute but not resolved: recorded paths are the inbox path as configured plus the
        # file's place in it. Symlink targets are checked against the resolved inbox.
        self.inbox = os.path.abspath(settings.inbox)
        self._own = tuple(str(path) for _, path in own_places(settings))
        self.scope = Scope(self.inbox, self.inbox, self._own)
        self.tracker = StabilityTracker(
            settings.quiet_period_s,
            close_events=False,  # set once the observer is known
            write_stall_s=settings.rescan_interval_s,
        )
        self._events = EventQueue()
        self._stopping = threading.Event()
        self._engine = make_engine(settings.db_url)
        self._sessions: sessionmaker[Session] = make_sessionmaker(self._engine)
        self._app = make_celery(settings)
        self.clock = StageClock()  # CPU per stage, reported when the watcher goes quiet
        self.publisher = Publisher(
            self._app,
            self._sessions,
            settings.files_per_message,
            on_idle=self._maybe_quiet,
            clock=self.clock,
        )
        self._processor_idle = True
        self._unrecorded: list[SeenFile] = []  # hashed, but the ledger was unavailable
        self._from_scan: set[str] = set()  # paths a rescan (not an event) handed over
        self._unfinished = UnfinishedFiles(settings.quiet_period_s, settings.rescan_interval_s)
        self._db_backoff = Backoff()
        self._recorder = Recorder(self._sessions, self.publisher, self.clock, self._db_backoff)
        self._hashers = Hashers(settings, self.clock)
        self._scan_backoff = Backoff(base=1.0, cap=settings.rescan_interval_s)
        self._rescan_now = threading.Event()
        self._observer = KeptObserver(
            settings, self._events, self._rescan_now.set, self._close_events, JOIN_TIMEOUT_S
        )
        self._started_scan = False
        self._ready: threading.Event | None = None
        self._announced = False  # the start-up rescan is taken in: said so (events.Ready)
        self.scans = 0  # rescans completed

    # --- counters for logs and tests -----------------------------------------------------------

    @property
    def sent(self) -> int:
        """Work items accepted by the broker."""
        return self.publisher.sent_items

    @property
    def recorded(self) -> int:
        """Files recorded in the ledger by this run."""
        return self._recorder.recorded

    @property
    def unsent(self) -> int:
        return self.publisher.unsent

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        """Watch until ``stop`` is set. ``ready`` (optional) is set once the start-up rescan has
        been taken in and the files it found complete are recorded."""
        self._ready = ready
        threads: list[threading.Thread] = []
        try:
            os.makedirs(self.inbox, exist_ok=True)
            self.scope = Scope.of(self.inbox, self._own)
            self._observer.start(self.scope)
            threads = [
                threading.Thread(target=target, name=f"watcher-{name}", daemon=True)
                for name, target in (
                    ("processor", self._process_loop),
                    ("publisher", lambda: self.publisher.run(self._stopping)),
                    ("scanner", self._scan_loop),
                )
            ]
            for thread in threads:
                thread.start()
            while not stop.wait(HEALTH_CHECK_S):
                self._observer.check(self.scope)
        finally:
            self._shutdown(threads)

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        # Observer first (no new events), then the threads finish their current unit of work.
        self._observer.stop()
        self._stopping.set()
        self._events.wake.set()
        self.publisher.wake.set()
        self._rescan_now.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("%s did not stop within %.0fs", thread.name, JOIN_TIMEOUT_S)
        self._hashers.shutdown()
        self._app.close()
        self._engine.dispose()
        log.info(
            "watcher stopped (recorded %d file(s), sent %d item(s) in %d message(s))",
            self.recorded,
            self.sent,
            self.publisher.sent_messages,
        )

    def _close_events(self, reported: bool) -> None:
        self.tracker.close_events = reported

    # --- rescans -------------------------------------------------------------------------------

    def _scan_loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                self.rescan()
                self._scan_backoff.succeeded()
                delay = self.settings.rescan_interval_s
            except Exception:
                delay = self._scan_backoff.failed()
                log.exception("rescan of %s failed; next try in %.1fs", self.inbox, delay)
            if first:
                self._events.put(Kind.SCAN_DONE, self.inbox)
                first = False
            self._rescan_now.wait(delay)
            self._rescan_now.clear()

    def rescan(self, root: str | None = None) -> int:
        """Queue the files under ``root`` (default: the inbox) that the ledger lacks or has
        with another size or mtime. Returns how many were queued."""
        paths = walk(root or self.inbox, self.scope)
        quiet_ns = int(self.settings.quiet_period_s * 1e9)
        queued = 0
        for part in chunked(paths, KNOWN_CHUNK):
            if self._stopping.is_set():
                break
            found = self._hashers.inspect(list(part), self.scope)
            known = self._known(list(found))
            now_ns = time.time_ns()
            for path, signature in found.items():
                if known.get(path) == signature:
                    continue
                # Untouched for a quiet period already (dropped while we were down): complete.
                settled = now_ns - signature.mtime_ns >= quiet_ns
                self._events.put(Kind.SETTLED if settled else Kind.SCANNED, path)
                queued += 1
        self.scans += 1
        log.info(
            "rescanned %s: %d file(s), %d new or changed", root or self.inbox, len(paths), queued
        )
        return queued

    # --- the processing loop -------------------------------------------------------------------

    def _process_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._process_once()
            except Exception:
                # Unexpected (a bug, not the DB: that is handled below). Never die; slow down.
                log.exception("watcher processing error; continuing")
                self._stopping.wait(1.0)

    def _process_once(self) -> None:
        timeout = self._next_wake()
        if timeout is None or timeout > 0:
            self._events.wake.wait(timeout)
        self._events.wake.clear()
        with self.clock.stage("events and stability"):
            for kind, path in self._events.drain():
                self._apply(kind, path)
            self.tracker.check(self._signature)
        if self._db_backoff.remaining() > 0:
            return
        if self._unrecorded:
            self._record()
        else:
            paths = self.tracker.take_ready(BURST)
            if paths:
                self._unrecorded = self._hash(paths)
                if self._unrecorded:
                    self._record()
        self._processor_idle = not (len(self.tracker) or self._unrecorded)
        self._maybe_quiet()
        if (
            not self._announced
            and self._started_scan
            and self.tracker.ready_count == 0
            and not self._unrecorded
        ):
            self._announced = True
            events.emit(events.Ready(role="watcher", detail=str(self.inbox)))
            if self._ready is not None:
                self._ready.set()
                self._ready = None

    def _maybe_quiet(self) -> None:
        """Report the stages' CPU once nothing is tracked, unrecorded or unsent (any thread)."""
        if self._processor_idle and not self.publisher.busy:
            period = self.clock.take()
            if period is not None:
                events.emit(period)

    def _next_wake(self) -> float | None:
        waits = []
        check = self.tracker.seconds_to_next_check()
        if check is not None:
            waits.append(check)
        if self._unrecorded or self.tracker.ready_count:
            waits.append(self._db_backoff.remaining())  # 0 unless the ledger is failing
        return min(waits) if waits else None

    def _apply(self, kind: Kind, path: str) -> None:
        match kind:
            case Kind.CREATED:
                self.tracker.created(path)
            case Kind.WRITTEN:
                self.tracker.written(path)
            case Kind.COMPLETED:
                self.tracker.completed(path)
            case Kind.SCANNED:
                self.tracker.scanned(path, None)  # its first check takes a fresh signature
                self._from_scan.add(path)
            case Kind.SETTLED:
                self.tracker.scanned(path, None, settled=True)
                self._from_scan.add(path)
            case Kind.GONE:
                self.tracker.forget(path)
                self._unfinished.forget(path)
                self._from_scan.discard(path)
            case Kind.GONE_TREE:
                self.tracker.forget_tree(path)
                self._unfinished.forget_tree(path)
            case Kind.FOLDER_IN:
                # A folder renamed in: its files were written before; they get no events.
                for found in walk(path, self.scope):
                    self.tracker.completed(found)
                    self._from_scan.add(found)
            case Kind.SCAN_FOLDER:
                for found in walk(path, self.scope):
                    self.tracker.scanned(found, None)
                    self._from_scan.add(found)
            case Kind.SCAN_DONE:
                self._started_scan = True

    def _signature(self, path: str) -> Signature | None:
        found = inspect(path, self.scope)
        if isinstance(found, Skip):
            if found is not Skip.VANISHED:
                log.debug("ignoring %s: %s", shown(path), found)
            return None
        return found

    def _hash(self, paths: list[str]) -> list[SeenFile]:
        """Hash the complete files among ``paths``, skipping those the ledger already has with
        this size and mtime (a rescan's or a late event's duplicate)."""
        with self.clock.stage("inspect"):  # stat, folder checks; the ledger for a rescan
            hashed = self._hashers.hash(paths, self.scope, self._known_scanned)
        return self._settle(hashed)

    def _known_scanned(self, paths: list[str]) -> dict[str, Signature]:
        """What the ledger has of the paths a rescan found (which it may well have already).
        A file an event completed was just written or moved in: looking it up first costs
        more than the hash it would rarely save, and recording is idempotent anyway."""
        scanned = [p for p in paths if p in self._from_scan]
        self._from_scan.difference_update(paths)
        return self._known_or_none(scanned) if scanned else {}

    def _known_or_none(self, paths: list[str]) -> dict[str, Signature]:
        try:
            return self._known(paths)
        except Exception as exc:  # only an optimisation: recording will retry the DB
            log.warning("ledger lookup failed (%s: %s); hashing all", type(exc).__name__, exc)
            return {}

    def _settle(self, hashed: Iterable[tuple[str, SeenFile | NotHashable]]) -> list[SeenFile]:
        seen: list[SeenFile] = []
        for path, found in hashed:
            if isinstance(found, SeenFile):
                if found.unfinished and not self._unfinished.done_waiting(found, self.tracker):
                    continue
                self._unfinished.forget(path)
                seen.append(found)
            elif isinstance(found, ChangedWhileReading):
                self.tracker.written(path)  # still being written: track it again
            else:
                log.info("skipping %s: %s", shown(path), found)
        return seen

    def _known(self, paths: list[str]) -> dict[str, Signature]:
        """Path -> (size, mtime_ns) the ledger holds for it."""
        with transaction(self._sessions) as session:
            known = known_paths(session, paths)
        return {path: Signature(*signature) for path, signature in known.items()}

    def _record(self) -> None:
        self._recorder.record(self._unrecorded)
        self._unrecorded = self._recorder.pending


def run_watcher(
    settings: Settings, stop: threading.Event, ready: threading.Event | None = None
) -> None:
    """Run the watcher until ``stop`` is set; returns after a clean stop. ``ready`` is set once
    the start-up rescan (or listing) is taken in. A bucket inbox is listed
    (:mod:`watcher.bucket`), a folder watched."""
    store = store_for(settings)
    if store is not None:
        watch_bucket(settings, store, stop, ready)
    else:
        Watcher(settings).run(stop, ready)
