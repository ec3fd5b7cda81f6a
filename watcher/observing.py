"""Which observer tells the watcher about its inbox: its own inotify reader on Linux
(watcher.inotify), watchdog's observer elsewhere, and a polling observer for network mounts
(``POLLING``) or where inotify's limits are reached."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable

from watchdog.observers.polling import PollingObserver

from contract.settings import Settings
from watcher.events import HANDLED_EVENTS, EventQueue, InboxHandler, Observing, make_observer
from watcher.filters import Scope
from watcher.inotify import InotifyReader

log = logging.getLogger("watcher.service")


def start_observer(
    settings: Settings, scope: Scope, events: EventQueue, on_overflow: Callable[[], None]
) -> tuple[Observing, bool]:
    """A started observer of ``scope``'s inbox, and whether it reports close-after-write
    events (then a file is complete at its close, not after a quiet period)."""
    inbox = scope.inbox
    if not settings.polling and sys.platform.startswith("linux"):
        try:
            reader = InotifyReader(scope, events, on_overflow)
        except OSError as exc:
            log.warning("inotify unavailable (%s); falling back to a polling observer", exc)
        else:
            reader.start()
            log.info(
                "watching %s (inotify, close-write events; quiet period %.2fs, rescan every %.0fs)",
                inbox,
                settings.quiet_period_s,
                settings.rescan_interval_s,
            )
            return reader, True
    handler = InboxHandler(inbox, events)
    observer, close_events = None, False
    try:
        observer, close_events = make_observer(settings.polling, settings.poll_interval_s)
        observer.schedule(handler, inbox, recursive=True, event_filter=HANDLED_EVENTS)
        observer.start()
    except OSError as exc:
        if settings.polling:
            raise
        # inotify limits (max_user_watches, max_user_instances): polling still works.
        log.warning("inotify unavailable (%s); falling back to a polling observer", exc)
        if observer is not None:
            with contextlib.suppress(Exception):
                observer.stop()
        observer = PollingObserver(timeout=settings.poll_interval_s)
        close_events = False
        observer.schedule(handler, inbox, recursive=True, event_filter=HANDLED_EVENTS)
        observer.start()
    log.info(
        "watching %s (%s, %s; quiet period %.2fs, rescan every %.0fs)",
        inbox,
        type(observer).__name__,
        "close-write events" if close_events else "no close events",
        settings.quiet_period_s,
        settings.rescan_interval_s,
    )
    return observer, close_events


class KeptObserver:
    """The inbox's observer, kept running: restarted when it dies (the inbox was deleted, or
    an emitter crashed), and then a rescan asked for, for whatever happened while it was down.
    ``on_start`` learns whether each new observer reports close-after-write events."""

    def __init__(
        self,
        settings: Settings,
        events: EventQueue,
        rescan: Callable[[], None],
        on_start: Callable[[bool], None],
        join_timeout_s: float,
    ) -> None:
        self._settings = settings
        self._events = events
        self._rescan = rescan
        self._on_start = on_start
        self._join_timeout_s = join_timeout_s
        self._observer: Observing | None = None

    def start(self, scope: Scope) -> None:
        observer, close_events = start_observer(self._settings, scope, self._events, self._rescan)
        self._on_start(close_events)
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(self._join_timeout_s)
            self._observer = None

    def check(self, scope: Scope) -> None:
        """Restart the observer if it or one of its emitters died."""
        observer = self._observer
        if (
            observer is not None
            and observer.is_alive()
            and all(e.is_alive() for e in observer.emitters)
        ):
            return
        log.warning("the observer stopped (inbox %s removed?); restarting it", scope.inbox)
        try:
            self.stop()
            os.makedirs(scope.inbox, exist_ok=True)
            self.start(scope)
            self._rescan()
        except Exception:
            log.exception("could not restart the observer; trying again")
