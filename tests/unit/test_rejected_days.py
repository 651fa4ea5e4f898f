"""The policy for rejected days: the volume band's reference, how a rejection is recorded and reported,
and training's refusal when too much of its window was rejected (pure functions, tiny fixtures)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from helpers_landing import good_events, write_events, write_good_day

from tasks.config import Settings
from tasks.contracts import ContractError
from tasks.ingest import (
    asset_extra,
    ingest_or_reject,
    rejected_days,
    rejection_summary,
    update_catalog,
    volume_band,
)
from tasks.training_data import TrainingRefused, refuse_if_too_many_rejected

TUESDAY = dt.date(2024, 3, 26)


def weeks_before(day: dt.date, counts: list[int]) -> dict[dt.date, int]:
    """``counts`` for the same weekday 1, 2, ... weeks before ``day``."""
    return {day - dt.timedelta(weeks=k + 1): n for k, n in enumerate(counts)}


def test_band_is_not_enforced_until_three_same_weekdays(shoprec_home: Settings) -> None:
    weekdays = {TUESDAY - dt.timedelta(days=k): 1000 for k in range(1, 7)}  # Wed..Mon of last week
    band = volume_band({**weekdays, **weeks_before(TUESDAY, [1000, 1000])}, TUESDAY, shoprec_home)
    assert (band.min_rows, band.max_rows) == (0, None)
    assert band.note == "skipped: 2 Tuesdays in the lake over the previous 4 weeks, need 3"


def test_reference_is_the_median_of_the_same_weekday(shoprec_home: Settings) -> None:
    """One holiday among the reference days (100 rows) does not move the band; other weekdays do not count."""
    history = {**weeks_before(TUESDAY, [1000, 100, 1200]), TUESDAY - dt.timedelta(days=1): 5}
    band = volume_band(history, TUESDAY, shoprec_home)
    assert (band.min_rows, band.max_rows) == (500, 3001)
    assert band.note == "rows within [500, 3001] (median 1000.0 of 3 Tuesdays)"


def test_reference_looks_back_volume_weeks_only(shoprec_home: Settings) -> None:
    history = weeks_before(TUESDAY, [1000, 1000, 1000, 9000, 9000, 9000, 9000])
    assert volume_band(history, TUESDAY, shoprec_home).min_rows == 500
    six_weeks = shoprec_home.model_copy(update={"volume_weeks": 6})
    assert volume_band(history, TUESDAY, six_weeks).min_rows == 2500  # median of 1000 x3, 9000 x3


def test_volume_check_off_has_no_band(shoprec_home: Settings) -> None:
    off = shoprec_home.model_copy(update={"volume_check": "off"})
    band = volume_band(weeks_before(TUESDAY, [1000] * 4), TUESDAY, off)
    assert (band.min_rows, band.max_rows, band.note) == (0, None, "off (SHOPREC_VOLUME_CHECK=off)")


def test_rejected_day_is_an_outcome_not_an_exception(shoprec_home: Settings) -> None:
    """The gate rejects the day: quarantined with its report, returned as 'rejected' with the reason."""
    write_good_day(shoprec_home.landing_dir, TUESDAY, n=20)
    rows = good_events(TUESDAY, 20)
    rows[0]["item_id"] = rows[1]["item_id"] = "item-unknown"
    write_events(shoprec_home.landing_dir, TUESDAY, rows)
    update_catalog(shoprec_home, TUESDAY)
    outcome = ingest_or_reject(shoprec_home, TUESDAY, run_id="r")
    assert outcome["status"] == "rejected"
    assert "2 of 20 rows failed row-level expectations" in outcome["reason"]
    report = json.loads((shoprec_home.quarantine_dir / "date=2024-03-26" / "report.json").read_text())
    assert (report["status"], report["rows_quarantined"]) == ("rejected", 2)
    assert rejected_days(shoprec_home, TUESDAY, TUESDAY) == [TUESDAY]


def test_unreadable_batch_is_rejected_but_a_missing_day_still_raises(shoprec_home: Settings) -> None:
    day_dir = shoprec_home.landing_dir / "date=2024-03-26"
    day_dir.mkdir(parents=True)
    (day_dir / "events.csv").write_bytes(b"")
    outcome = ingest_or_reject(shoprec_home, TUESDAY, run_id="r")
    assert outcome["status"] == "rejected"
    assert outcome["reason"].startswith("unreadable batch: ")
    assert "events.csv: empty file" in outcome["reason"]
    with pytest.raises(ContractError, match="does not exist"):
        ingest_or_reject(shoprec_home, TUESDAY + dt.timedelta(days=1), run_id="r")


def test_asset_extra_lists_accepted_and_rejected_days() -> None:
    outcomes = [
        {"day": "2024-03-25", "status": "accepted", "rows_clean": 9, "rows_quarantined": 1},
        {"day": "2024-03-26", "status": "rejected", "reason": "volume"},
    ]
    assert asset_extra(outcomes) == {
        "days": ["2024-03-25"],
        "rows_clean": {"2024-03-25": 9},
        "rows_quarantined": {"2024-03-25": 1},
        "rejected_days": {"2024-03-26": "volume"},
    }
    assert rejection_summary(outcomes) == (
        "1 of 2 days rejected and quarantined (the others went on): 2024-03-26: volume"
    )
    assert rejection_summary(outcomes[:1]) == ""


def _fake_days(settings: Settings, accepted: list[dt.date], rejected: list[dt.date]) -> None:
    """Lake folders for ``accepted`` days; quarantine reports for both kinds."""
    for day in accepted:
        (settings.events_dir / f"date={day.isoformat()}").mkdir(parents=True)
    for day, status in [*((d, "accepted") for d in accepted), *((d, "rejected") for d in rejected)]:
        folder = settings.quarantine_dir / f"date={day.isoformat()}"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({"status": status}))


def test_training_goes_on_with_a_few_rejected_days(shoprec_home: Settings) -> None:
    days = [TUESDAY + dt.timedelta(days=k) for k in range(20)]
    lake = [d for d in days if d != days[5]]
    _fake_days(shoprec_home, lake, [days[5]])
    assert refuse_if_too_many_rejected(shoprec_home, lake) == [days[5]]


def test_training_refuses_when_too_much_of_its_window_was_rejected(shoprec_home: Settings) -> None:
    """2 of the 8 days from the first to the last lake day were rejected; rejected days outside the
    window (before the first, after the last lake day) do not count."""
    days = [TUESDAY + dt.timedelta(days=k) for k in range(8)]
    rejected = [days[2], days[5]]
    lake = [d for d in days if d not in rejected]
    outside = [days[0] - dt.timedelta(days=3), days[-1] + dt.timedelta(days=1)]
    _fake_days(shoprec_home, lake, rejected + outside)
    with pytest.raises(
        TrainingRefused,
        match=r"2 of 8 days in its window 2024-03-26\.\.2024-04-02 were rejected by ingest "
        r"\(25\.0% > SHOPREC_MAX_REJECTED_DAY_SHARE 10\.0%\): 2024-03-28, 2024-03-31",
    ):
        refuse_if_too_many_rejected(shoprec_home, lake)
    relaxed = shoprec_home.model_copy(update={"max_rejected_day_share": 0.25})
    assert refuse_if_too_many_rejected(relaxed, lake) == rejected
