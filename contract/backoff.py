"""Capped exponential backoff, the one rule every retry here follows: the n-th consecutive
failure waits ``min(cap, base * 2**(n-1))``, scaled down by a random jitter so that processes
retrying one restarting server do not hammer it in step."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float = 0.0) -> float:
    """The wait after ``failures`` (>= 1) consecutive failures. ``jitter`` in [0, 1] is the
    share of the delay that is random: 0 none, 0.5 half, 1 "full jitter"."""
    delay = min(cap, base * 2 ** max(0, failures - 1))
    return delay * random.uniform(1.0 - jitter, 1.0) if jitter else delay


class Backoff:
    """Backoff state for a loop that must not block: it asks :meth:`remaining` before trying."""

    def __init__(
        self,
        base: float = 0.2,
        cap: float = 30.0,
        jitter: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.failures = 0
        self._clock = clock
        self._until = 0.0

    def failed(self) -> float:
        """Record a failure; returns the delay before the next try."""
        self.failures += 1
        delay = backoff_delay(self.failures, base=self.base, cap=self.cap, jitter=self.jitter)
        self._until = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self._until = 0.0

    def remaining(self) -> float:
        """Seconds until the next try is allowed (0: now)."""
        return max(0.0, self._until - self._clock())


def retry(
    func: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    what: str,
    attempts: int = 8,
    base: float = 0.05,
    cap: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``func`` until it succeeds, retrying the errors ``transient`` accepts (a database
    locked or restarting, a broker down) with full-jitter backoff; anything else, and the last
    attempt's error, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except Exception as exc:
            if not transient(exc) or attempt == attempts:
                raise
            delay = backoff_delay(attempt, base=base, cap=cap, jitter=1.0)
            # The first retry is news (it reaches `up`'s terminal); the rest go to the log.
            log.log(
                logging.WARNING if attempt == 1 else logging.INFO,
                "%s failed (%s: %s); retry %d/%d in %.2fs",
                what,
                type(exc).__name__,
                exc,
                attempt,
                attempts - 1,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")
