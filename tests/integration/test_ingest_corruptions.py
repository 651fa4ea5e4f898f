"""Corrupted landing days: each corruption is quarantined or rejected with its reason; no bad row is in the lake.

Real Great Expectations through :func:`tasks.ingest.ingest_day` (the function the DAG task calls).  Row-level
corruptions use 60 rows so one or two bad rows stay under the 5% bar and the day is accepted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_landing import good_events, write_events, write_good_day
from helpers_raw_ids import lake_event_ids

from tasks.config import Settings
from tasks.contracts import ContractError
from tasks.ingest import IngestError, IngestRejected, ingest_day, update_catalog

pytestmark = pytest.mark.integration

DAY = dt.date(2024, 3, 5)
N = 60
Rows = list[dict[str, Any]]


def set_field(index: int, **values: Any) -> Callable[[Rows], Rows]:
    def corrupt(rows: Rows) -> Rows:
        rows[index].update(values)
        return rows

    return corrupt


def duplicate(rows: Rows) -> Rows:
    rows[7]["event_id"] = rows[6]["event_id"]
    return rows


ROW_CORRUPTIONS: dict[str, tuple[Callable[[Rows], Rows], dict[int, list[str]]]] = {
    "null_user_id": (set_field(3, user_id=None), {3: ["user_id_not_null"]}),
    "null_item_id": (set_field(4, item_id=None), {4: ["item_id_not_null"]}),
    "duplicate_event_id": (duplicate, {6: ["event_id_unique"], 7: ["event_id_unique"]}),
    "unknown_item": (set_field(5, item_id="item-999"), {5: ["item_id_in_catalog"]}),
    "negative_price": (
        set_field(3, unit_price=-4.0),  # row 3 is a purchase (EVENT_TYPES[3])
        {3: ["unit_price_positive_for_purchases"]},
    ),
    "zero_quantity_purchase": (set_field(7, quantity=0), {7: ["quantity_at_least_one_for_purchases"]}),
    "future_timestamp": (
        set_field(8, event_timestamp=dt.datetime(2024, 3, 7, 9, tzinfo=dt.UTC)),
        {8: ["event_timestamp_in_day", "event_timestamp_not_in_future"]},
    ),
    "unknown_event_type": (set_field(9, event_type="refund"), {9: ["event_type_allowed"]}),
}


def lake_ids(settings: Settings) -> set[str]:
    path = settings.events_dir / "date=2024-03-05" / "part-0.parquet"
    return set(pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist())


def assert_rejection_report(settings: Settings, error: str) -> None:
    """The unreadable day is quarantined whole: a rejected report naming the problem, no rows file."""
    folder = settings.quarantine_dir / "date=2024-03-05"
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert (report["status"], report["rows_clean"]) == ("rejected", 0)
    assert len(report["errors"]) == 1
    assert re.search(error, report["errors"][0]), report["errors"]
    assert not (folder / "rows.parquet").exists()


def quarantine_rows(settings: Settings) -> list[dict[str, Any]]:
    return pq.read_table(settings.quarantine_dir / "date=2024-03-05" / "rows.parquet").to_pylist()


@pytest.mark.parametrize("corruption", sorted(ROW_CORRUPTIONS))
def test_row_corruption_is_quarantined_with_its_reason(shoprec_home: Settings, corruption: str) -> None:
    corrupt, expected = ROW_CORRUPTIONS[corruption]
    write_good_day(shoprec_home.landing_dir, DAY, n=N)
    rows = corrupt(good_events(DAY, N))
    write_events(shoprec_home.landing_dir, DAY, rows)
    update_catalog(shoprec_home, DAY)
    manifest = ingest_day(shoprec_home, DAY, run_id="r")
    quarantined = {row["source_row"]: row["failed_expectations"] for row in quarantine_rows(shoprec_home)}
    assert quarantined == expected
    assert manifest.rows_clean == N - len(expected)
    bad_ids = lake_event_ids(shoprec_home, (rows[i]["event_id"] for i in expected))
    assert lake_ids(shoprec_home).isdisjoint(bad_ids)


def test_wrong_type_in_csv_is_quarantined(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=N)
    events = shoprec_home.landing_dir / "date=2024-03-05" / "events.parquet"
    frame = pq.read_table(events).to_pandas()
    events.unlink()
    frame["quantity"] = frame["quantity"].astype(str)
    frame.loc[2, "quantity"] = "two"
    frame.to_csv(events.with_suffix(".csv"), index=False)
    update_catalog(shoprec_home, DAY)
    ingest_day(shoprec_home, DAY, run_id="r")
    rows = quarantine_rows(shoprec_home)
    assert [(r["source_file"], r["source_row"], r["failed_expectations"]) for r in rows] == [
        ("events.csv", 2, ["quantity_parses_as_contract_type", "quantity_not_null"])
    ]
    assert lake_event_ids(shoprec_home, [frame.loc[2, "event_id"]]).isdisjoint(lake_ids(shoprec_home))
    assert len(lake_ids(shoprec_home)) == N - 1


def rewrite_events(settings: Settings, table: pa.Table) -> Path:
    path = settings.landing_dir / "date=2024-03-05" / "events.parquet"
    pq.write_table(table, path)
    return path


def test_wrong_type_in_parquet_rejects_the_day(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=N)
    table = pq.read_table(shoprec_home.landing_dir / "date=2024-03-05" / "events.parquet")
    prices = pa.array([str(v) for v in table.column("unit_price").to_pylist()], pa.string())
    rewrite_events(shoprec_home, table.set_column(6, "unit_price", prices))
    update_catalog(shoprec_home, DAY)
    with pytest.raises(IngestError, match=r"column 'unit_price' has type string, the contract says double"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()
    assert_rejection_report(shoprec_home, r"column 'unit_price' has type string, the contract says double")


def test_missing_column_rejects_the_day(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=N)
    table = pq.read_table(shoprec_home.landing_dir / "date=2024-03-05" / "events.parquet")
    rewrite_events(shoprec_home, table.drop_columns(["country"]))
    update_catalog(shoprec_home, DAY)
    with pytest.raises(ContractError, match=r"missing columns: country"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()
    assert_rejection_report(shoprec_home, r"missing columns: country")


def test_personal_data_column_rejects_the_day(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=N)
    table = pq.read_table(shoprec_home.landing_dir / "date=2024-03-05" / "events.parquet")
    emails = pa.array([f"person{i}@example.com" for i in range(N)])
    rewrite_events(shoprec_home, table.append_column("email", emails))
    update_catalog(shoprec_home, DAY)
    with pytest.raises(ContractError, match=r"personal-data columns are refused: email"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()
    assert_rejection_report(shoprec_home, r"personal-data columns are refused: email")


def test_empty_file_rejects_the_day(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=N)
    empty = shoprec_home.landing_dir / "date=2024-03-05" / "events-2.csv"
    empty.write_bytes(b"")
    update_catalog(shoprec_home, DAY)
    with pytest.raises(IngestError, match=r"events-2.csv: empty file"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()
    assert_rejection_report(shoprec_home, r"events-2.csv: empty file")
    assert empty.exists()


# The volume band's reference: the same weekday (DAY is a Tuesday) over the previous weeks.
SAME_WEEKDAY_HISTORY = [DAY - dt.timedelta(weeks=k) for k in (3, 2, 1)]


def test_day_at_ten_percent_volume_is_rejected(shoprec_home: Settings) -> None:
    for day in SAME_WEEKDAY_HISTORY:
        write_good_day(shoprec_home.landing_dir, day, n=N)
        update_catalog(shoprec_home, day)
        ingest_day(shoprec_home, day, run_id=f"r{day}")
    write_good_day(shoprec_home.landing_dir, DAY, n=N // 10)
    update_catalog(shoprec_home, DAY)
    with pytest.raises(IngestRejected, match=r"row_count_within_trailing_band \(observed 6\)"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()
    report = json.loads((shoprec_home.quarantine_dir / "date=2024-03-05" / "report.json").read_text())
    assert report["status"] == "rejected"
    assert report["volume_check"] == "rows within [30, 181] (median 60.0 of 3 Tuesdays)"


def _ingest_history(settings: Settings, days: list[dt.date], n_for: Callable[[dt.date], int]) -> None:
    for day in days:
        write_good_day(settings.landing_dir, day, n=n_for(day))
        update_catalog(settings, day)
        ingest_day(settings, day, run_id=f"r-{day}")


def test_busy_day_within_the_high_band_is_accepted(shoprec_home: Settings) -> None:
    _ingest_history(shoprec_home, SAME_WEEKDAY_HISTORY, lambda _: N)
    write_good_day(shoprec_home.landing_dir, DAY, n=int(N * 2.5))
    update_catalog(shoprec_home, DAY)
    manifest = ingest_day(shoprec_home, DAY, run_id="r")
    assert manifest.rows_clean == int(N * 2.5)


def test_day_above_the_high_band_is_rejected(shoprec_home: Settings) -> None:
    _ingest_history(shoprec_home, SAME_WEEKDAY_HISTORY, lambda _: N)
    write_good_day(shoprec_home.landing_dir, DAY, n=N * 4)
    update_catalog(shoprec_home, DAY)
    with pytest.raises(IngestRejected, match=r"row_count_within_trailing_band \(observed 240\)"):
        ingest_day(shoprec_home, DAY, run_id="r")


def test_quiet_weekday_is_judged_against_the_same_weekday(shoprec_home: Settings) -> None:
    """A Sunday with a quarter of weekday volume passes when earlier Sundays were as quiet."""
    sunday = dt.date(2024, 3, 24)
    history = [sunday - dt.timedelta(days=k) for k in range(22, 0, -1)]
    backfill = shoprec_home.model_copy(update={"volume_check": "off"})  # history loaded as a backfill
    _ingest_history(backfill, history, lambda d: 20 if d.weekday() == 6 else 80)
    write_good_day(shoprec_home.landing_dir, sunday, n=20)
    update_catalog(shoprec_home, sunday)
    manifest = ingest_day(shoprec_home, sunday, run_id="r")
    assert manifest.rows_clean == 20
    assert manifest.volume_check == "rows within [10, 61] (median 20.0 of 3 Sundays)"


def test_volume_check_off_accepts_a_known_holiday(shoprec_home: Settings) -> None:
    _ingest_history(shoprec_home, SAME_WEEKDAY_HISTORY, lambda _: N)
    write_good_day(shoprec_home.landing_dir, DAY, n=N // 10)
    update_catalog(shoprec_home, DAY)
    relaxed = shoprec_home.model_copy(update={"volume_check": "off"})
    manifest = ingest_day(relaxed, DAY, run_id="r")
    assert manifest.rows_clean == N // 10


def test_first_saturday_of_a_new_shop_is_not_judged_by_weekdays(shoprec_home: Settings) -> None:
    """The Online Retail II case: four weekdays, then a quiet Saturday; no Saturday history, no band."""
    saturday = dt.date(2009, 12, 5)
    _ingest_history(shoprec_home, [saturday - dt.timedelta(days=k) for k in (4, 3, 2, 1)], lambda _: N)
    write_good_day(shoprec_home.landing_dir, saturday, n=N // 10)
    update_catalog(shoprec_home, saturday)
    manifest = ingest_day(shoprec_home, saturday, run_id="r")
    assert manifest.rows_clean == N // 10
    assert manifest.volume_check == "skipped: 0 Saturdays in the lake over the previous 4 weeks, need 3"
