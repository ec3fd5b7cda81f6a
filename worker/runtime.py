"""Per-process state of a worker, created lazily on first use in the process that runs the
tasks (never at import, never in a parent that forks): engine, model, batch engine."""

from __future__ import annotations

import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_sessionmaker
from inbox_classifier.settings import Settings
from worker.batching import BatchEngine
from worker.model_holder import ModelHolder


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._batcher: BatchEngine | None = None

    def sessions(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                self._engine = make_engine(self.settings.db_url)
                self._sessions = make_sessionmaker(self._engine)
            return self._sessions

    def batcher(self) -> BatchEngine:
        sessions = self.sessions()
        with self._lock:
            if self._batcher is None:
                holder = ModelHolder(self.settings, sessions)
                self._batcher = BatchEngine(self.settings, holder, sessions)
            return self._batcher

    def in_flight(self) -> frozenset[str]:
        """Hashes of the images this worker holds (received, not yet committed); none before
        its first classify task (the model is not loaded for this)."""
        with self._lock:
            batcher = self._batcher
        return batcher.in_flight() if batcher is not None else frozenset()

    def close(self) -> None:
        with self._lock:
            if self._batcher is not None:
                self._batcher.stop()
                self._batcher = None
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
                self._sessions = None
