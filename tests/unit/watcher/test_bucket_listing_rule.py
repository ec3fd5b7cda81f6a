"""How often the bucket watcher lists the whole prefix: in proportion to what a full listing
costs (no threshold where it jumps from every pass to every RESCAN_INTERVAL_S), never less
often than RESCAN_INTERVAL_S."""

from __future__ import annotations

import pytest

from watcher.bucket import FULL_PASS_SHARE, full_pass_period


def test_full_listings_take_a_bounded_share_of_the_time_and_grow_smoothly() -> None:
    listings = [0.0, 0.01, 0.1, 0.5, 1.0, 1.5, 5.0, 20.0]
    periods = [full_pass_period(s, rescan_interval_s=300.0) for s in listings]
    assert periods == sorted(periods)  # costlier listings, rarer full passes
    for seconds, period in zip(listings[1:], periods[1:], strict=True):
        assert seconds / period == pytest.approx(FULL_PASS_SHARE)
    assert full_pass_period(1.5, 300.0) == pytest.approx(15.0)
    assert full_pass_period(0.0, 300.0) == 0.0  # not measured yet: every pass is full


def test_a_full_pass_comes_at_least_every_rescan_interval() -> None:
    assert full_pass_period(100.0, rescan_interval_s=300.0) == 300.0
    assert full_pass_period(10_000.0, rescan_interval_s=60.0) == 60.0
