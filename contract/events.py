"""What a process tells `up` (and anyone reading its log) happened: typed events, one log record
each, from the logger :data:`EVENT_LOGGER`, whose message is ``<kind> <json>``. `up`'s console
turns them into its terminal lines (``inbox_classifier.console``) by decoding the JSON, never by
reading English sentences, so the wording of a log line can change without breaking it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

EVENT_LOGGER = "inbox_classifier.events"


@dataclass(frozen=True)
class BusyPeriod:
    """A classify worker went idle after a burst: what it settled meanwhile."""

    kind: ClassVar[str] = "busy_period"
    classified: int  # images that got their first result
    rescored: int  # images that had a result already (a rescore, or a redelivery)
    failed: int
    seconds: float
    rate: float  # images settled per second
    # Seconds per stage, summed over the threads that ran it (worker.classify.batch_stats): where
    # the
    # time went, for the benchmark's per-stage breakdown.
    stages_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WatcherPeriod:
    """The watcher went quiet after recording files: the CPU seconds each of its stages took
    (watcher.stats), for the plumbing benchmark's per-stage breakdown."""

    kind: ClassVar[str] = "watcher_period"
    files: int
    seconds: float
    stages_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    """A role is serving (a worker took its first message off the queue, the web app answers)."""

    kind: ClassVar[str] = "ready"
    role: str
    detail: str = ""


@dataclass(frozen=True)
class Promoted:
    """A training run made its candidate the active model."""

    kind: ClassVar[str] = "promoted"
    version: str
    accuracy: float | None
    previous: str | None
    previous_accuracy: float | None  # on the same held-out images
    images: int  # how many held-out images both were scored on


@dataclass(frozen=True)
class RunStarted:
    """A training run has read its data and starts training."""

    kind: ClassVar[str] = "run_started"
    run_id: int
    trigger: str  # contract.messages.Trigger's value: labels, schedule, manual...
    images: int
    classes: int


@dataclass(frozen=True)
class RunEnded:
    """A training run ended without a promotion (rejected, skipped, failed, cancelled)."""

    kind: ClassVar[str] = "run_ended"
    run_id: int
    status: str
    message: str


@dataclass(frozen=True)
class Rescoring:
    """Images sent to be classified again by a newly promoted version."""

    kind: ClassVar[str] = "rescoring"
    version: str
    images: int


Event = BusyPeriod | WatcherPeriod | Ready | Promoted | RunStarted | RunEnded | Rescoring
KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (BusyPeriod, WatcherPeriod, Ready, Promoted, RunStarted, RunEnded, Rescoring)
}


def encode(event: Event) -> str:
    return f"{event.kind} {json.dumps(asdict(event), separators=(',', ':'))}"


def decode(message: str) -> Event | None:
    """The event a message of :data:`EVENT_LOGGER` holds; None for anything else."""
    kind, _, payload = message.partition(" ")
    cls = KINDS.get(kind)
    if cls is None:
        return None
    try:
        data: Any = json.loads(payload)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
    except (ValueError, TypeError, AttributeError):
        return None


def emit(event: Event) -> None:
    logging.getLogger(EVENT_LOGGER).info("%s", encode(event))
