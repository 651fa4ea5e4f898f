"""Bad landing input gets a clear error and loses nothing (landing stays as it was, the lake untouched)."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest
from helpers_landing import write_good_day

from tasks import ingest
from tasks.config import Settings
from tasks.ingest import IngestError, ingest_day, update_catalog

DAY = dt.date(2024, 3, 5)


def landing_snapshot(settings: Settings) -> dict[str, bytes]:
    return {
        str(p.relative_to(settings.landing_dir)): p.read_bytes() for p in settings.landing_dir.rglob("*.*")
    }


def test_missing_landing_folder_is_a_clear_error(shoprec_home: Settings) -> None:
    with pytest.raises(IngestError, match=r"landing folder .*date=2024-03-05 does not exist"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert not shoprec_home.events_dir.exists()


def test_empty_landing_folder_is_a_clear_error(shoprec_home: Settings) -> None:
    (shoprec_home.landing_dir / "date=2024-03-05").mkdir(parents=True)
    with pytest.raises(IngestError, match=r"has no events\*.parquet\|csv files"):
        ingest_day(shoprec_home, DAY, run_id="r")


def test_unreadable_file_is_named_and_kept(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=10)
    update_catalog(shoprec_home, DAY)
    broken = shoprec_home.landing_dir / "date=2024-03-05" / "events-broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    before = landing_snapshot(shoprec_home)
    with pytest.raises(IngestError, match=r"events-broken.parquet: unreadable"):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert landing_snapshot(shoprec_home) == before
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()


def test_one_huge_file_is_refused_with_its_size(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=200)
    update_catalog(shoprec_home, DAY)
    monkeypatch.setattr(ingest, "MAX_LANDING_FILE_BYTES", 1024)
    with pytest.raises(
        IngestError, match=r"events.parquet: \d+ bytes, above the 1024-byte limit .* split it"
    ):
        ingest_day(shoprec_home, DAY, run_id="r")
    assert (shoprec_home.landing_dir / "date=2024-03-05" / "events.parquet").exists()


def test_mixed_encodings_in_titles_are_decoded(shoprec_home: Settings) -> None:
    folder = shoprec_home.landing_dir / "date=2024-03-05"
    folder.mkdir(parents=True)
    header = b"item_id,title,category,price,first_seen\n"
    utf8 = "item-001,Caf\u00e9 mug,home,3.5,2024-03-05T00:00:00Z\n".encode()
    latin1 = "item-002,Cr\u00e8me jug,home,4.0,2024-03-05T00:00:00Z\n".encode("latin-1")
    (folder / "items.csv").write_bytes(header + utf8 + latin1)
    update_catalog(shoprec_home, DAY)
    catalog = pq.read_table(shoprec_home.items_dir / "items.parquet").to_pylist()
    assert [(row["item_id"], row["title"]) for row in catalog] == [
        ("item-001", "Caf\u00e9 mug"),
        ("item-002", "Cr\u00e8me jug"),
    ]


def test_catalog_keeps_earliest_first_seen_and_latest_title(shoprec_home: Settings) -> None:
    folder = shoprec_home.landing_dir
    for day, title in ((dt.date(2024, 3, 4), "Old"), (DAY, "New")):
        (folder / f"date={day.isoformat()}").mkdir(parents=True)
        (folder / f"date={day.isoformat()}" / "items.csv").write_text(
            f"item_id,title,category,price,first_seen\nitem-001,{title},home,1.0,{day.isoformat()}T08:00:00Z\n"
        )
    manifest = update_catalog(shoprec_home, DAY)
    (row,) = pq.read_table(shoprec_home.items_dir / "items.parquet").to_pylist()
    assert (row["title"], row["first_seen"].isoformat()) == ("New", "2024-03-04T08:00:00+00:00")
    assert (manifest.items, manifest.items_new_today) == (1, 0)


def test_csv_timestamps_keep_each_value_its_own_offset(shoprec_home: Settings) -> None:
    """A landing CSV mixing offsets and naive values: each offset applies to its own value and naive
    values are UTC (pandas alone reads the naive value with the first value's +01:00)."""
    import pandas as pd
    from helpers_landing import good_events

    write_good_day(shoprec_home.landing_dir, DAY, n=10)
    rows = good_events(DAY, 2, prefix="csv-")
    frame = pd.DataFrame(rows).assign(event_timestamp=["2024-03-05T10:00:00+01:00", "2024-03-05T10:00:00"])
    frame.to_csv(shoprec_home.landing_dir / "date=2024-03-05" / "events-csv.csv", index=False)
    update_catalog(shoprec_home, DAY)
    manifest = ingest_day(shoprec_home, DAY, run_id="r")
    assert (manifest.rows_clean, manifest.rows_quarantined) == (12, 0)
    lake = pq.read_table(shoprec_home.events_dir / "date=2024-03-05" / "part-0.parquet").to_pandas()
    stamps = set(lake["event_timestamp"])
    assert {pd.Timestamp("2024-03-05T09:00:00Z"), pd.Timestamp("2024-03-05T10:00:00Z")} <= stamps
