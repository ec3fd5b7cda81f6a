"""Recording what the watcher hashed: one transaction per burst, then the work items go to
the publisher. A burst the ledger refuses for a reason other than being unavailable (a bug, a
value it cannot store) is recorded file by file, so one bad entry fails alone, once, and the
rest go on; an unavailable ledger leaves them pending, retried with backoff."""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from contract.backoff import Backoff
from contract.paths import shown
from contract.records import SeenFile
from db.engine import transaction
from db.errors import is_transient
from db.ledger import record_files
from watcher.publisher import Publisher
from watcher.stats import StageClock

log = logging.getLogger("watcher.service")


class Recorder:
    """Used by the watcher's processing thread only."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        clock: StageClock,
        backoff: Backoff,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._clock = clock
        self._backoff = backoff
        self._refused: set[tuple[str, str]] = set()  # (path, sha256) the ledger would not take
        self.pending: list[SeenFile] = []  # hashed, not recorded yet (the ledger was away)
        self.recorded = 0

    def record(self, files: list[SeenFile]) -> None:
        """Record ``files``; what could not be recorded yet stays in :attr:`pending`."""
        self.pending = files
        started = time.perf_counter()
        read_at = self._publisher.generation()
        try:
            with self._clock.stage("record"), transaction(self._sessions) as session:
                items = record_files(session, files)
        except Exception as exc:
            if not is_transient(exc):
                self._one_by_one(files, read_at)
                return
            delay = self._backoff.failed()
            log.error(
                "could not record %d file(s) (%s: %s); retrying in %.1fs",
                len(files),
                type(exc).__name__,
                exc,
                delay,
            )
            return
        self._backoff.succeeded()
        self.pending = []
        self.recorded += len(files)
        self._clock.recorded(len(files))
        queued = self._publisher.submit(items, read_at)
        log.info(
            "recorded %d file(s), %d to classify, in %.1f ms",
            len(files),
            queued,
            (time.perf_counter() - started) * 1000,
        )

    def _one_by_one(self, files: list[SeenFile], read_at: int) -> None:
        items = []
        for index, seen in enumerate(files):
            try:
                with transaction(self._sessions) as session:
                    items += record_files(session, [seen])
            except Exception as exc:
                if is_transient(exc):  # the ledger went away meanwhile: the rest wait
                    self.pending = files[index:]
                    self._backoff.failed()
                    break
                # Logged once per content; a later rescan tries again, quietly.
                key = (seen.path, seen.sha256)
                level = logging.DEBUG if key in self._refused else logging.ERROR
                self._refused.add(key)
                log.log(
                    level,
                    "could not record %s (%s: %s); the other files go on",
                    shown(seen.path),
                    type(exc).__name__,
                    exc,
                )
                continue
            self.recorded += 1
        else:
            self.pending = []
        if items:
            self._publisher.submit(items, read_at)
