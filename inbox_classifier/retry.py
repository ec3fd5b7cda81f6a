"""Retry transient failures (database locked or restarting, Redis unreachable) with capped
exponential backoff and jitter. Anything else is raised at once."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import redis
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.ConnectionError,
    redis.TimeoutError,
    KombuOperationalError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


def backoff_delays(attempts: int, base: float, cap: float) -> list[float]:
    """Full-jitter exponential delays between ``attempts`` tries."""
    return [random.uniform(0, min(cap, base * 2**i)) for i in range(attempts - 1)]


def retry_transient(
    func: Callable[[], T],
    *,
    what: str,
    attempts: int = 8,
    base: float = 0.05,
    cap: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    delays = backoff_delays(attempts, base, cap)
    for attempt in range(attempts):
        try:
            return func()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts - 1:
                raise
            delay = delays[attempt]
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.2fs",
                what,
                type(exc).__name__,
                exc,
                attempt + 1,
                attempts - 1,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")
