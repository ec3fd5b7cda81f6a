"""Capped exponential backoff with jitter, for retrying a database or broker that is down."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self, base: float = 0.2, cap: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._clock = clock
        self._until = 0.0

    def failed(self) -> float:
        """Record a failure; returns the delay before the next try."""
        self.failures += 1
        # Jitter keeps a watcher and the workers from hammering a restarting server in step.
        delay = min(self.cap, self.base * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        self._until = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self._until = 0.0

    def remaining(self) -> float:
        """Seconds until the next try is allowed (0: now)."""
        return max(0.0, self._until - self._clock())
