"""Per-process state of a worker, created lazily on first use in the process that runs the
tasks (never at import, never in a parent that forks): engine, model, batch engine. Its
metrics exist from the start (empty until the first batch), so they can be served at once."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from db.engine import LazySessions
from worker.batching import BatchEngine
from worker.metrics import WorkerMetrics
from worker.model_holder import ModelHolder


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._sessions = LazySessions(settings.db_url)
        self._batcher: BatchEngine | None = None
        self.metrics = WorkerMetrics()

    def sessions(self) -> sessionmaker[Session]:
        return self._sessions.get()

    def batcher(self) -> BatchEngine:
        sessions = self.sessions()
        with self._lock:
            if self._batcher is None:
                holder = ModelHolder(self.settings, sessions)
                self._batcher = BatchEngine(self.settings, holder, sessions, self.metrics)
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
        self._sessions.close()
        self.metrics.close()
