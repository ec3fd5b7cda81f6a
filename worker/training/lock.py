"""One training at a time, across every worker and CLI: a Redis lock with a timeout, renewed
by a heartbeat thread while the run lives. A killed run stops renewing, so its lock expires
after ``timeout_s`` and never blocks the next run for long. The same heartbeat stamps the run's
ledger row, which is the second guard (see :mod:`worker.training.run`): it still holds when
Redis was restarted or flushed under a running training.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import redis
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)

LOCK_NAME = "inbox_classifier:retrain-lock"
LOCK_TIMEOUT_S = 120.0


class TrainingLock:
    def __init__(
        self, redis_url: str | None, timeout_s: float = LOCK_TIMEOUT_S, name: str = LOCK_NAME
    ) -> None:
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self.name = name
        self.lost = False  # the lock expired under us and another run took it
        self._client: redis.Redis | None = None
        self._lock: redis.lock.Lock | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def in_redis(self) -> bool:
        """True when the Redis lock is held (not the ledger-only fallback)."""
        return self._lock is not None

    def stale_after(self) -> timedelta:
        """How long a run's heartbeat may be silent before the run counts as dead. A live run
        stamps its row every ``interval_s`` (timeout / 4). Holding the Redis lock, a row
        silent for half the timeout is dead (its own lock expired a whole timeout after its
        last renewal); without Redis, a whole timeout of silence is required."""
        return timedelta(seconds=self.timeout_s / 2 if self.in_redis else self.timeout_s)

    @property
    def interval_s(self) -> float:
        return max(0.2, self.timeout_s / 4)

    def acquire(self) -> bool:
        """True if this run may train. Without Redis (no URL, or unreachable) only the ledger
        guard applies, with a warning."""
        if not self.redis_url:
            log.warning("no Redis URL: relying on the ledger alone to keep trainings apart")
            return True
        try:
            self._client = redis.Redis.from_url(
                self.redis_url, socket_timeout=10, socket_connect_timeout=10
            )
            # thread_local=False: the heartbeat thread renews the token this thread took.
            self._lock = self._client.lock(
                self.name, timeout=self.timeout_s, blocking=False, thread_local=False
            )
            return bool(self._lock.acquire(blocking=False))
        except RedisError as exc:
            log.warning("Redis unreachable (%s): relying on the ledger alone", exc)
            self._lock = None
            return True

    def start_heartbeat(self, beat: Callable[[], None]) -> None:
        """Renew the lock and call ``beat`` every ``interval_s`` until :meth:`release`."""
        self._thread = threading.Thread(
            target=self._run, args=(beat,), name="training-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self, beat: Callable[[], None]) -> None:
        while not self._stop.wait(self.interval_s):
            self.renew()
            try:
                beat()
            except Exception:
                log.exception("training heartbeat could not update the ledger")

    def renew(self) -> None:
        if self._lock is None:
            return
        try:
            self._lock.reacquire()
            self.lost = False
        except LockError:
            # Expired (the process stalled longer than the timeout): take it again if free.
            with contextlib.suppress(RedisError):
                self.lost = not self._lock.acquire(blocking=False)
            if self.lost:
                log.error("the training lock was taken by another run")
        except RedisError as exc:
            log.warning("could not renew the training lock: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._lock is not None:
            with contextlib.suppress(LockError, RedisError):
                self._lock.release()
        if self._client is not None:
            self._client.close()
