"""The watcher for an inbox in a bucket (``INBOX=s3://bucket/prefix``): listings, and the
store's notifications where it sends them (``BUCKET_EVENTS_LISTEN``,
``BUCKET_EVENTS_QUEUE_URL``: :mod:`watcher.notified`).

Discovery that misses nothing rests on listing, because notifications are at least once, and
can be late or lost: a listing every ``BUCKET_LIST_INTERVAL_S``; a notified key is taken in
between, at once. A pass lists the whole prefix as often as that stays within a tenth of the
watcher's time (every pass, for tens of thousands of keys on a store nearby), and at least
every ``RESCAN_INTERVAL_S``; the passes in between list only the keys after the last one
recorded (ListObjectsV2's StartAfter, kept in ``<data_dir>/bucket-listing.json``, so a restart
goes on from there), so a key that sorts before that marker waits for the next full pass. An
object is read once per content: one this process recorded with the same ETag and size, or one
the ledger has with the same size and LastModified (its path is its URL), is not read again;
any other is streamed and hashed, and its SHA-256 is the image's key, as for a file. A changed
object (a new ETag) is new content.

Recording and sending are the folder watcher's (:class:`watcher.recorder.Recorder`,
:class:`watcher.publisher.Publisher`): one transaction per burst, at least once to Redis."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from broker.app import make_celery
from contract import events
from contract.backoff import Backoff
from contract.failures import Unusable
from contract.records import SeenFile
from contract.settings import Settings
from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import known_paths
from objectstore.store import ObjectInfo, ObjectStore, StoreUnavailable
from watcher.notified import NotifiedKeys, notifications
from watcher.publisher import Publisher
from watcher.recorder import Recorder
from watcher.stats import StageClock

log = logging.getLogger("watcher.service")

BURST = 512  # objects read and recorded per transaction
READERS = 16  # objects read at once: network-bound, so more than the cores
JOIN_TIMEOUT_S = 30.0
MARKER_FILE = "bucket-listing.json"
FULL_PASS_SHARE = 0.1  # of the watcher's time that listing the whole prefix may take


def watch_bucket(
    settings: Settings,
    store: ObjectStore,
    stop: threading.Event,
    ready: threading.Event | None = None,
) -> None:
    """Watch a bucket inbox until ``stop``, with the notification sources the settings name
    (:func:`watcher.notified.notifications`)."""
    with notifications(settings, store.location.bucket, stop) as notified:
        BucketWatcher(settings, store, notified).run(stop, ready)


def full_pass_period(listing_seconds: float, rescan_interval_s: float) -> float:
    """Seconds from one full listing to the next: as often as full listings stay within
    FULL_PASS_SHARE of the watcher's time (every pass for a prefix that lists in a fraction of
    the interval; every 15 s for one that takes 1.5 s), and at least every RESCAN_INTERVAL_S.
    In between, only the keys after the marker are listed, so a key that sorts before it
    (uploads seldom finish in key order) waits for the next full one."""
    return min(rescan_interval_s, listing_seconds / FULL_PASS_SHARE)


class LedgerAway(Exception):
    """The ledger could not record a burst: the pass stops, and the next one reads it again."""


class BucketWatcher:
    """One watcher of a bucket inbox: ``run`` it once, until ``stop`` is set."""

    def __init__(
        self, settings: Settings, store: ObjectStore, notified: NotifiedKeys | None = None
    ) -> None:
        self.settings = settings
        self.notified = notified  # keys the store's notifications named (watcher.notified)
        self.store = store
        self.location = store.location
        self._engine = make_engine(settings.db_url)
        self._sessions: sessionmaker[Session] = make_sessionmaker(self._engine)
        self._app = make_celery(settings)
        self.clock = StageClock()
        self.publisher = Publisher(
            self._app, self._sessions, settings.files_per_message, clock=self.clock
        )
        self._backoff = Backoff(base=1.0, cap=min(60.0, settings.rescan_interval_s))
        self._recorder = Recorder(self._sessions, self.publisher, self.clock, Backoff())
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="watcher-read")
        self._marker_file = Path(settings.data_dir) / MARKER_FILE
        self._marker = self._load_marker()
        # key -> (etag, size) that this process recorded or found recorded: not read again.
        self._recorded: dict[str, tuple[str, int]] = {}
        self.listing_seconds = 0.0  # the last full listing's own time (reading excluded)
        self.announced = False  # the first full pass is done (ready)

    @property
    def recorded(self) -> int:
        return self._recorder.recorded

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        stopping = threading.Event()
        publisher = threading.Thread(
            target=self.publisher.run, args=(stopping,), name="watcher-publisher", daemon=True
        )
        publisher.start()
        try:
            self._loop(stop, ready)
        finally:
            stopping.set()
            self.publisher.wake.set()
            publisher.join(JOIN_TIMEOUT_S)
            self._readers.shutdown(wait=False, cancel_futures=True)
            self._app.close()
            self._engine.dispose()
            log.info(
                "watcher stopped (recorded %d object(s), sent %d item(s) in %d message(s))",
                self.recorded,
                self.publisher.sent_items,
                self.publisher.sent_messages,
            )

    def _loop(self, stop: threading.Event, ready: threading.Event | None) -> None:
        next_full = 0.0
        while not stop.is_set():
            full = time.monotonic() >= next_full
            started = time.monotonic()
            try:
                found = self.listing_pass(full=full, stop=stop)
            except (StoreUnavailable, Unusable, LedgerAway) as exc:
                delay = self._backoff.failed()
                log.error(
                    "listing %s failed (%s); next try in %.1fs", self.location.url, exc, delay
                )
                stop.wait(delay)
                continue
            self._backoff.succeeded()
            if full:
                next_full = started + full_pass_period(
                    self.listing_seconds, self.settings.rescan_interval_s
                )
                if found or not self.announced:
                    log.info(
                        "listed %s in %.1f s: %d new or changed object(s)",
                        self.location.url,
                        time.monotonic() - started,
                        found,
                    )
                if not self.announced:  # the start-up pass is taken in
                    self.announced = True
                    events.emit(events.Ready(role="watcher", detail=self.location.url))
                    if ready is not None:
                        ready.set()
            self._until_next_listing(stop)

    def _until_next_listing(self, stop: threading.Event) -> None:
        """Wait out the list interval, taking notified keys in the meantime as they come."""
        deadline = time.monotonic() + self.settings.bucket_list_interval_s
        while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
            if self.notified is None:
                stop.wait(left)
            elif self.notified.arrived.wait(min(left, 0.25)):
                self.notified_pass(self.notified.take())

    # --- one pass ----------------------------------------------------------------------------

    def listing_pass(self, *, full: bool, stop: threading.Event | None = None) -> int:
        """List the inbox (all of it, or after the marker), read and record what is new, and
        return how many objects were recorded. A full pass times the listing itself."""
        found, batch = 0, []
        started, taking = time.monotonic(), 0.0
        for info in self.store.listing("" if full else self._marker):
            if self._seen(info):
                continue
            batch.append(info)
            if len(batch) >= BURST:
                took = time.monotonic()
                found += self._take(batch)
                taking += time.monotonic() - took
                batch = []
                if stop is not None and stop.is_set():
                    return found
        if batch:
            took = time.monotonic()
            found += self._take(batch)
            taking += time.monotonic() - took
        if full:
            self.listing_seconds = time.monotonic() - started - taking
        return found

    def notified_pass(self, keys: list[str]) -> int:
        """Read and record what notifications named (each key listed first: its ETag, size
        and existence are the store's word, not the notification's); how many were recorded.
        A failure here is logged: the listings find those keys again."""
        try:
            listed = list(self._readers.map(self.store.listed, keys))
            batch = [info for info in listed if info is not None and not self._seen(info)]
            return self._take(batch, advance=False) if batch else 0
        except (StoreUnavailable, Unusable, LedgerAway) as exc:
            log.warning("%d notified key(s) left to the listing: %s", len(keys), exc)
            return 0

    def _seen(self, info: ObjectInfo) -> bool:
        """This process recorded (or found recorded) the object with this ETag and size."""
        return self._recorded.get(info.key) == (info.etag, info.size)

    def _take(self, batch: list[ObjectInfo], advance: bool = True) -> int:
        """Read and record one burst; the marker moves past a listed burst once it is in the
        ledger (not past notified keys: they may come in any order)."""
        urls = [self.location.url_of(info.key) for info in batch]
        with self.clock.stage("lookup"), transaction(self._sessions) as session:
            known = known_paths(session, urls)
        fresh: list[ObjectInfo] = []
        for url, info in zip(urls, batch, strict=True):
            changed = info.key in self._recorded  # listed with another ETag or size than seen
            if not changed and known.get(url) == (info.size, info.modified_ns):
                self._recorded[info.key] = (info.etag, info.size)
            else:
                fresh.append(info)
        seen = [s for s in self._readers.map(self._read, fresh) if s is not None]
        if seen:
            self._recorder.record(seen)
            if self._recorder.pending:  # the ledger was away: read again on the next pass
                self._recorder.pending = []
                raise LedgerAway("the ledger did not take the burst")
        for info in fresh:
            self._recorded[info.key] = (info.etag, info.size)
        if advance:
            self._advance(max(info.key for info in batch))
        return len(seen)

    def _read(self, info: ObjectInfo) -> SeenFile | None:
        url = self.location.url_of(info.key)
        try:
            with self.clock.stage("hash"):
                sha256, size, _ = self.store.hash_object(info.key)
        except Unusable as exc:  # deleted since the listing, or refused to this user
            log.warning("%s: %s", url, exc)
            return None
        return SeenFile(url, sha256, size, info.modified_ns)

    # --- the marker --------------------------------------------------------------------------

    def _load_marker(self) -> str:
        try:
            saved = json.loads(self._marker_file.read_text())
        except (OSError, ValueError):
            return ""
        if not isinstance(saved, dict) or saved.get("inbox") != self.location.url:
            return ""  # another bucket's (the inbox was changed): start from the beginning
        return str(saved.get("after", ""))

    def _advance(self, key: str) -> None:
        if key <= self._marker:
            return
        self._marker = key
        self._marker_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._marker_file.with_name(f".{MARKER_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"inbox": self.location.url, "after": key}))
        os.replace(tmp, self._marker_file)
