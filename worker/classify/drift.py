"""The drift watch: now and then, on a classify worker, compare the active version's
production confidences with its validation ones and warn (in the worker's log, which `up`
shows) when they drift past ``DRIFT_WARN``. The web app's /metrics exports the same figures."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from db import quality, versions
from db.engine import transaction

log = logging.getLogger(__name__)

CHECK_EVERY_S = 600.0


class DriftWatch:
    def __init__(self, settings: Settings, every_s: float = CHECK_EVERY_S) -> None:
        self.settings = settings
        self.every_s = every_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")

    def maybe_check(self, sessions: sessionmaker[Session]) -> quality.Quality | None:
        """Check at most every ``every_s`` seconds; returns what was measured."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.every_s:
                return None
            self._checked_at = time.monotonic()
        with transaction(sessions) as session:
            active = versions.active_model(session)
            found = quality.version_quality(session, active.id) if active else None
        bound = self.settings.drift_warn
        if found is not None and found.drifted(bound):
            log.warning(
                "model %s: production confidences drifted from validation (total variation "
                "%.2f > DRIFT_WARN %.2f over %d predictions): the inbox may hold other kinds "
                "of images than it was trained on; review some and retrain",
                found.name,
                found.confidence_drift,
                bound,
                found.predictions,
            )
        return found
