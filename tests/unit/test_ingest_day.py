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
