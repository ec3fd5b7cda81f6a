"""Upper bounds that no machine reaches, for the settings' ranges: a larger value is a slip (a
unit, a stray digit)."""

from __future__ import annotations

MAX_THREADS = 1024
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
WEEK_S = 7 * DAY_S
YEAR_S = 366 * DAY_S
