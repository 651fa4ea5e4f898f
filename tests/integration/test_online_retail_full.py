"""The Online Retail adapter on the whole shared 2009-2010 file: the counts its report states.

The dataset's attribution note says that after dropping rows without a customer and cancellations there
are 407,695 rows, 4,314 customers, 4,017 stock codes and 19,215 invoices; the report reproduces that
stage exactly and then explains every further row it drops (see docs/data-contract.md).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from export_variants import shared_file

from tasks.config import Settings
from tasks.contracts import list_partitions
from tasks.sources.online_retail import REPORT_FILE, RowCounts, load_online_retail

pytestmark = pytest.mark.integration


@pytest.fixture
def full_file() -> Path:
    return shared_file()


def test_full_file_counts_match_the_attribution_note_and_explain_every_drop(
    full_file: Path, shoprec_home: Settings
) -> None:
    landing = shoprec_home.landing_dir
    manifest, report = load_online_retail(full_file, landing)

    assert report.rows_read == 525_461
    assert report.customer_and_cancellation_filtered == RowCounts(
        rows=407_695, customers=4_314, stock_codes=4_017, invoices=19_215
    )
    assert report.dropped == {
        "overlapping_sheet": 0,
        "repeated_delivery": 0,
        "unparseable_timestamp": 0,
        "cancellation": 10_206,
        "adjustment_invoice": 3,
        "missing_customer": 107_557,  # 107,927 lack one: 367 cancellations and 3 "A" rows went earlier
        "non_positive_quantity": 0,
        "non_product_code": 1_370,
        "non_positive_price": 28,
        "missing_title": 0,
        "outside_window": 0,
    }
    assert report.kept == RowCounts(rows=406_297, customers=4_285, stock_codes=4_007, invoices=18_966)
    assert report.kept.rows == 407_695 - 1_370 - 28
    assert report.special["repeated_identical_lines_kept"] == 6_743
    assert report.special["ambiguous_local_times_read_as_gmt"] == 0
    assert report.special["nonexistent_local_times_shifted"] == 0

    assert (manifest.n_events, manifest.n_items, manifest.n_users) == (406_297, 4_007, 4_285)
    assert len(manifest.days) == report.days == 307
    assert (manifest.days[0], manifest.days[-1]) == (dt.date(2009, 12, 1), dt.date(2010, 12, 9))
    assert list_partitions(landing) == list(manifest.days)

    events = ds.dataset(sorted(str(p) for p in landing.glob("date=*/events.parquet")), format="parquet")
    assert events.count_rows(filter=ds.field("event_type") == "purchase") == events.count_rows() == 406_297
    items = ds.dataset(sorted(str(p) for p in landing.glob("date=*/items.parquet")), format="parquet")
    assert items.count_rows() == report.items == 4_007
    assert json.loads((landing / REPORT_FILE).read_text(encoding="utf-8"))["kept"]["rows"] == 406_297
