"""Which observer tells the watcher about its inbox: its own inotify reader on Linux
(watcher.inotify), watchdog's observer elsewhere, and a polling observer for network mounts
(``POLLING``) or where inotify's limits are reached."""

from __future__ import annotations

import contextlib
import logging
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
