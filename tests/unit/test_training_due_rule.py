"""The due rule of ``train_recommender`` on data time, the days a run pins, and the day-range tags."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks.contracts import format_day_ranges, parse_day_ranges
from tasks.registry import data_tags, decide_training_due, version_data_end
from tasks.training_data import pinned_days

D0 = dt.date(2025, 6, 1)


def days(first: int, last: int) -> list[dt.date]:
    return [D0 + dt.timedelta(days=k) for k in range(first, last + 1)]


def test_day_ranges_round_trip_and_show_gaps() -> None:
    window = [*days(0, 8), *days(10, 19), D0 + dt.timedelta(days=22)]
    text = format_day_ranges(reversed(window))
    assert text == "2025-06-01..2025-06-09,2025-06-11..2025-06-20,2025-06-23"
    assert parse_day_ranges(text) == window
    assert format_day_ranges([]) == ""
    assert parse_day_ranges("") == []


def test_a_malformed_day_range_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_day_ranges("2025-06-09..2025-06-01")
    with pytest.raises(ValueError, match="Invalid isoformat string"):
        parse_day_ranges("last week")


def test_a_run_pins_the_lake_days_up_to_the_last_day_its_events_name() -> None:
    lake = days(0, 19)
    assert pinned_days(lake, [D0 + dt.timedelta(days=4), D0 + dt.timedelta(days=6)]) == days(0, 6)
    assert pinned_days(lake) == lake  # nothing named: everything the lake holds now
    assert pinned_days(lake, [D0 - dt.timedelta(days=1)]) == []


def test_version_tags_name_the_days_and_the_data_end() -> None:
    tags = data_tags(days(0, 13))
    assert tags == {"shoprec.data_days": "2025-06-01..2025-06-14", "shoprec.data_end": "2025-06-14"}
    assert version_data_end(tags) == D0 + dt.timedelta(days=13)
    # a version registered before the tag existed: its as_of is the end of its last day
    assert version_data_end({"shoprec.as_of": "2025-06-15 00:00:00+00:00"}) == D0 + dt.timedelta(days=13)
    assert version_data_end({}) is None


def due(window: list[dt.date], last_end: dt.date | None, hours: float = 24.0) -> tuple[bool, str]:
    decision = decide_training_due(window, last_end, eval_days=4, min_interval_hours=hours)
    return decision.due, decision.reason


def test_too_short_a_window_is_not_due() -> None:
    assert due([], None) == (False, "no lake partition up to the run's data end")
    ok, reason = due(days(0, 10), None)  # 11 days; 3 x 4 needed
    assert not ok
    assert reason == (
        "data 2025-06-01..2025-06-11 covers 11 days; a training needs 12 (validation and test "
        "windows of 4 days and as much history before them)"
    )
    assert due(days(0, 11), None) == (True, "no version registered yet; data end 2025-06-12")


def test_a_run_is_judged_on_its_own_data_end_not_on_newer_lake_days() -> None:
    """During a backfill the lake already holds day 19 when the run triggered by day 13 starts; the
    last version was trained up to day 15: that run's own data is older, so it is not due."""
    last = D0 + dt.timedelta(days=15)
    ok, reason = due(days(0, 13), last)
    assert not ok
    assert reason == (
        "data end 2025-06-14 is -48 h after the newest version's data end 2025-06-16; the minimum is 24 h"
    )
    assert due(days(0, 16), last)[0]  # one day newer: 24 h
    assert not due(days(0, 16), last, hours=48.0)[0]
    assert due(days(0, 15), last, hours=0.0)[0]  # same data end, no minimum: due
