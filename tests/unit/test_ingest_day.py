"""ingest_day / update_catalog on tiny landing fixtures (real Great Expectations, no Airflow)."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest
from helpers_landing import good_events, write_events, write_good_day
from helpers_raw_ids import lake_event_ids

from tasks.config import Settings
from tasks.ingest import IngestRejected, ingest_day, update_catalog

DAY = dt.date(2024, 3, 5)


def test_good_day_goes_to_lake_with_pseudonyms(shoprec_home: Settings) -> None:
    rows = write_good_day(shoprec_home.landing_dir, DAY, n=40)
    update_catalog(shoprec_home, DAY)
    manifest = ingest_day(shoprec_home, DAY, run_id="r1")
    lake = pq.read_table(shoprec_home.events_dir / "date=2024-03-05" / "part-0.parquet")
    assert (manifest.rows_in, manifest.rows_clean, manifest.rows_quarantined) == (40, 40, 0)
    assert lake.num_rows == 40
    assert lake_event_ids(shoprec_home, (r["event_id"] for r in rows)) == set(
        lake.column("event_id").to_pylist()
    )
    assert all(u.startswith("u_") and len(u) == 34 for u in lake.column("user_id").to_pylist())


def test_rerun_is_byte_identical(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=20)
    update_catalog(shoprec_home, DAY)
    ingest_day(shoprec_home, DAY, run_id="r1")
    lake_file = shoprec_home.events_dir / "date=2024-03-05" / "part-0.parquet"
    quarantine_files = sorted((shoprec_home.quarantine_dir / "date=2024-03-05").iterdir())
    first = [lake_file.read_bytes(), *(p.read_bytes() for p in quarantine_files)]
    ingest_day(shoprec_home, DAY, run_id="r2")
    second = [lake_file.read_bytes(), *(p.read_bytes() for p in quarantine_files)]
    assert first == second
    assert sorted(p.name for p in (shoprec_home.events_dir).iterdir()) == ["date=2024-03-05"]


def test_bad_share_above_threshold_rejects_day(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=20)
    rows = good_events(DAY, 20)
    rows[0]["item_id"] = "item-unknown"
    rows[1]["item_id"] = "item-unknown"
    write_events(shoprec_home.landing_dir, DAY, rows)
    update_catalog(shoprec_home, DAY)
    with pytest.raises(IngestRejected, match=r"2 of 20 rows.*item_id_in_catalog=2"):
        ingest_day(shoprec_home, DAY, run_id="r1")
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()


def test_dominant_user_rows_are_quarantined_with_pseudonym_and_share(shoprec_home: Settings) -> None:
    """A placeholder customer with half of the day's rows: its rows are quarantined as
    user_share_within_limit (not counted against the bad-row bar); the report names its pseudonym
    and share, never the raw id; the other users' rows reach the lake."""
    import json

    from helpers_landing import raw_user

    from tasks.pseudonymize import load_key, pseudonymize

    write_good_day(shoprec_home.landing_dir, DAY, n=40)
    rows = good_events(DAY, 40)
    for row in rows[:20]:
        row["user_id"] = "0"  # "unknown customer" as some exports write it
    write_events(shoprec_home.landing_dir, DAY, rows)
    update_catalog(shoprec_home, DAY)
    small_shop = shoprec_home.model_copy(update={"dominant_user_min_users": 2})  # a tiny test day
    manifest = ingest_day(small_shop, DAY, run_id="r1")
    assert (manifest.rows_clean, manifest.rows_quarantined) == (20, 20)
    quarantine = pq.read_table(shoprec_home.quarantine_dir / "date=2024-03-05" / "rows.parquet").to_pylist()
    placeholder = pseudonymize("0", load_key(shoprec_home))
    assert {r["user_id"] for r in quarantine} == {placeholder}
    assert {tuple(r["failed_expectations"]) for r in quarantine} == {("user_share_within_limit",)}
    report_text = (shoprec_home.quarantine_dir / "date=2024-03-05" / "report.json").read_text()
    report = json.loads(report_text)
    assert report["dominant_users"] == {placeholder: 0.5}
    assert report["status"] == "accepted"
    assert '"0"' not in report_text
    assert raw_user(0) not in report_text


def test_users_under_the_share_limit_are_untouched(shoprec_home: Settings) -> None:
    """Eight users with 12.5% each, limit 20%: nothing quarantined; at limit 10% all are dominant."""
    write_good_day(shoprec_home.landing_dir, DAY, n=40)
    update_catalog(shoprec_home, DAY)
    assert ingest_day(shoprec_home, DAY, run_id="r1").rows_quarantined == 0
    strict = shoprec_home.model_copy(update={"max_user_share": 0.1, "dominant_user_min_users": 8})
    manifest = ingest_day(strict, DAY, run_id="r2")
    assert (manifest.rows_clean, manifest.rows_quarantined) == (0, 40)
    # a day with fewer distinct users than dominant_user_min_users (default 50) is not judged by share
    few = shoprec_home.model_copy(update={"max_user_share": 0.1})
    assert ingest_day(few, DAY, run_id="r3").rows_quarantined == 0
