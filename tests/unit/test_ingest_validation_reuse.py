"""What the ingest gate validates again and what it does not (real Great Expectations, no Airflow).

An item catalog byte-identical to the one that last passed the same items suite is not validated
again; any other catalog is, and a bad one is still refused.  Events are judged against the items
landed by their day.  Data Docs are built once, from the stored results of a run's days.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
from helpers_landing import catalog_items, good_events, write_events, write_good_day, write_items

from tasks.config import Settings
from tasks.ingest import (
    CATALOG_FILE,
    IngestRejected,
    build_run_data_docs,
    ingest_day,
    update_catalog,
    validation_result_path,
)

DAY1, DAY2, DAY3 = dt.date(2024, 3, 4), dt.date(2024, 3, 5), dt.date(2024, 3, 6)


def test_unchanged_catalog_is_not_validated_again(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY1, n=10)
    write_events(shoprec_home.landing_dir, DAY2, good_events(DAY2, 10))  # no items that day
    first = update_catalog(shoprec_home, DAY1)
    catalog = (shoprec_home.items_dir / CATALOG_FILE).read_bytes()
    second = update_catalog(shoprec_home, DAY2)
    assert (first.validation, second.validation) == ("validated", "unchanged")
    assert validation_result_path(shoprec_home, "items", DAY1).is_file()
    assert not validation_result_path(shoprec_home, "items", DAY2).exists()
    assert (shoprec_home.items_dir / CATALOG_FILE).read_bytes() == catalog
    assert (second.items, second.validation_result_uri) == (first.items, "")


def test_changed_catalog_is_validated(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY1, n=10)
    write_items(shoprec_home.landing_dir, DAY2, catalog_items(DAY2, ("item-new",)))
    update_catalog(shoprec_home, DAY1)
    manifest = update_catalog(shoprec_home, DAY2)
    assert (manifest.validation, manifest.items, manifest.items_new_today) == ("validated", 11, 1)
    stored = json.loads(validation_result_path(shoprec_home, "items", DAY2).read_text())
    assert (stored["suite"], stored["run_name"], stored["result"]["success"]) == ("items", "2024-03-05", True)
    lake = pq.read_table(shoprec_home.items_dir / CATALOG_FILE).column("item_id").to_pylist()
    assert "item-new" in lake


def test_bad_changed_catalog_is_still_rejected_and_the_lake_keeps_the_last_good_one(
    shoprec_home: Settings,
) -> None:
    write_good_day(shoprec_home.landing_dir, DAY1, n=10)
    bad = catalog_items(DAY2, ("item-bad",))
    bad[0]["price"] = -1.0
    write_items(shoprec_home.landing_dir, DAY2, bad)
    update_catalog(shoprec_home, DAY1)
    good = (shoprec_home.items_dir / CATALOG_FILE).read_bytes()
    with pytest.raises(IngestRejected, match=r"failed the items suite.*item-bad: price_positive"):
        update_catalog(shoprec_home, DAY2)
    assert (shoprec_home.items_dir / CATALOG_FILE).read_bytes() == good
    stored = json.loads(validation_result_path(shoprec_home, "items", DAY2).read_text())
    assert stored["result"]["success"] is False  # the failed validation is kept for the Data Docs
    with pytest.raises(IngestRejected):  # and refused again on a re-run: nothing recorded it as passed
        update_catalog(shoprec_home, DAY2)


def test_catalog_changed_outside_ingest_is_validated_again(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY1, n=10)
    update_catalog(shoprec_home, DAY1)
    target = shoprec_home.items_dir / CATALOG_FILE
    rows = pq.read_table(target).slice(0, 3)
    pq.write_table(rows, target)  # an edit by hand: the recorded hash no longer matches the file
    manifest = update_catalog(shoprec_home, DAY1)
    assert manifest.validation == "validated"
    assert pq.read_table(target).num_rows == 10


def test_event_naming_an_item_that_lands_later_is_quarantined(shoprec_home: Settings) -> None:
    """A run over several days updates the catalog through its last day first; day 1's events are
    still judged against the items landed by day 1, as its own daily run would judge them."""
    write_items(shoprec_home.landing_dir, DAY1, catalog_items(DAY1))
    rows = good_events(DAY1, 40)
    rows[0]["item_id"] = "item-later"
    write_events(shoprec_home.landing_dir, DAY1, rows)
    write_items(shoprec_home.landing_dir, DAY3, catalog_items(DAY3, ("item-later",)))
    update_catalog(shoprec_home, DAY3)
    manifest = ingest_day(shoprec_home, DAY1, run_id="r1")
    assert (manifest.rows_clean, manifest.rows_quarantined) == (39, 1)
    quarantine = pq.read_table(shoprec_home.quarantine_dir / "date=2024-03-04" / "rows.parquet")
    assert quarantine.column("failed_expectations").to_pylist() == [["item_id_in_catalog"]]


def test_data_docs_are_built_once_from_the_stored_results_of_the_days(shoprec_home: Settings) -> None:
    for day in (DAY1, DAY2):
        write_good_day(shoprec_home.landing_dir, day, n=10)
        update_catalog(shoprec_home, day)
        ingest_day(shoprec_home, day, run_id="r")
    index = build_run_data_docs(shoprec_home, [DAY1, DAY2])
    site = shoprec_home.reports_dir / "data_docs" / "dates=2024-03-04_2024-03-05"
    assert index == (site / "index.html").as_uri()
    pages = sorted(p.relative_to(site / "validations").parts[:2] for p in site.glob("validations/**/*.html"))
    # day 2 lands the same items again: its catalog is unchanged, so it has no items result
    assert pages == [("events", "2024-03-04"), ("events", "2024-03-05"), ("items", "2024-03-04")]
    html = (site / "index.html").read_text()
    assert "2024-03-04" in html
    assert "2024-03-05" in html
    build_run_data_docs(shoprec_home, [DAY1, DAY2])  # a re-run replaces the site, leaves no temp folder
    assert sorted(p.name for p in site.parent.iterdir()) == [site.name]
