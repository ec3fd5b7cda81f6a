"""Time in the ledger is UTC. SQLite hands datetimes back without a zone; these helpers make
every moment aware before it is compared or printed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` with a zone: naive datetimes from the ledger are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return None if moment is None else as_utc(moment).astimezone(UTC).isoformat()


def parse_since(text: str) -> datetime:
    """'30m', '2h', '7d' (ago) or an ISO date/time (UTC if no zone given). Raises ValueError
    with a message that shows what is accepted."""
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        try:
            return utcnow() - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:  # before the year 1
            raise ValueError(f"{text!r} reaches back before the year 1") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: use e.g. 30m, 2h, 7d or 2026-11-23T08:00") from None
    try:
        return as_utc(moment).astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 in UTC
        raise ValueError(f"{text!r} is out of range") from None
