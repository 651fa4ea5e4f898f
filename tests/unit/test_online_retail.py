"""The Online Retail adapter on a real-data sample (tests/data, CC BY 4.0): every bad-row kind's handling."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.config import Settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, ContractError, list_partitions
from tasks.sources.online_retail import (
    DROP_REASONS,
    REPORT_FILE,
    OnlineRetailReport,
    RowCounts,
    category_of,
    is_non_product,
    load_online_retail,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "online_retail_sample.parquet"


def _raw() -> pd.DataFrame:
    return pd.read_parquet(SAMPLE)


def _events(landing: Path) -> pd.DataFrame:
    return pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted(landing.glob("date=*/events.parquet"))],
        ignore_index=True,
    )


def _items(landing: Path) -> pd.DataFrame:
    return pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted(landing.glob("date=*/items.parquet"))],
        ignore_index=True,
    )


@pytest.fixture
def loaded(shoprec_home: Settings) -> tuple[Path, OnlineRetailReport]:
    _, report = load_online_retail(SAMPLE, shoprec_home.landing_dir)
    return shoprec_home.landing_dir, report


def _load_frame(frame: pd.DataFrame, tmp_path: Path) -> tuple[Path, OnlineRetailReport]:
    path = tmp_path / "edited.parquet"
    frame.to_parquet(path, index=False)
    _, report = load_online_retail(path, tmp_path / "landing")
    return tmp_path / "landing", report


def test_sample_holds_every_bad_row_kind() -> None:
    raw = _raw()
    codes = set(raw["StockCode"])
    assert {"POST", "DOT", "M", "D", "C2", "PADS", "ADJUST", "TEST001", "BANK CHARGES", "AMAZONFEE"} <= codes
    assert any(c.startswith("gift_0001_") for c in codes)
    assert raw["Invoice"].str.startswith("C").sum() > 0
    assert raw["Invoice"].str.startswith("A").sum() == 3
    assert raw["Customer ID"].isna().sum() > 0
    assert raw["Description"].isna().sum() > 0
    assert ((raw["Quantity"] <= 0) & ~raw["Invoice"].str.startswith("C")).sum() > 0
    assert raw.duplicated().sum() > 0


def test_report_counts_each_drop_reason_once_in_rule_order(loaded: tuple[Path, OnlineRetailReport]) -> None:
    _, report = loaded
    raw = _raw()
    assert report.rows_read == len(raw) == 9589
    assert report.dropped == {
        "overlapping_sheet": 0,
        "repeated_delivery": 0,
        "unparseable_timestamp": 0,
        "cancellation": int(raw["Invoice"].str.startswith("C").sum()),
        "adjustment_invoice": 3,
        "missing_customer": 1539,
        "non_positive_quantity": 0,  # the sample's write-offs have no customer: dropped one rule earlier
        "non_product_code": 29,
        "non_positive_price": 3,
        "missing_title": 0,
        "outside_window": 0,
    }
    assert report.dropped["cancellation"] == 161
    assert report.rows_read - sum(report.dropped.values()) == report.kept.rows


def test_counts_after_customer_and_cancellation_filter_match_plain_pandas(
    loaded: tuple[Path, OnlineRetailReport],
) -> None:
    raw = _raw()
    left = raw[raw["Customer ID"].notna() & ~raw["Invoice"].str.startswith("C")]
    assert loaded[1].customer_and_cancellation_filtered == RowCounts(
        rows=len(left),
        customers=left["Customer ID"].nunique(),
        stock_codes=left["StockCode"].nunique(),
        invoices=left["Invoice"].nunique(),
    )


def test_only_real_sales_to_known_customers_become_events(loaded: tuple[Path, OnlineRetailReport]) -> None:
    landing, report = loaded
    events = _events(landing)
    assert len(events) == report.kept.rows == 7854
    assert (events["event_type"] == "purchase").all()
    assert not events["session_id"].str.match(r"[CA]").any()
    assert events["user_id"].str.fullmatch(r"\d{5}").all()
    assert (events["quantity"] > 0).all()
    assert (events["unit_price"] > 0).all()
    assert not events["item_id"].map(is_non_product).any()
    assert not set(events["item_id"]) & {"POST", "DOT", "M", "PADS", "C2", "TEST001", "GIFT_0001_30"}


def test_real_product_codes_with_letters_are_kept(loaded: tuple[Path, OnlineRetailReport]) -> None:
    items = set(_items(loaded[0])["item_id"])
    assert {"SP1002", "79323P", "79323W"} <= items


def test_event_id_is_invoice_and_line_and_session_is_invoice(loaded: tuple[Path, OnlineRetailReport]) -> None:
    events = _events(loaded[0]).set_index("event_id")
    assert events["item_id"].is_unique is False  # the same product is bought many times
    first = events.loc["489434-0001"]
    assert (first["item_id"], first["user_id"], first["session_id"]) == ("85048", "13085", "489434")
    assert (first["quantity"], first["unit_price"]) == (12, 6.95)
    assert events.loc["489434-0002", "item_id"] == "79323P"


def test_repeated_identical_lines_are_kept_as_separate_events(
    loaded: tuple[Path, OnlineRetailReport],
) -> None:
    landing, report = loaded
    events = _events(landing)
    assert report.special["repeated_identical_lines_kept"] == 155
    assert events["event_id"].is_unique
    repeated = events.duplicated(subset=["session_id", "item_id", "quantity", "unit_price"]).sum()
    assert repeated >= 155


def test_london_time_is_converted_to_utc_across_both_clock_changes(
    loaded: tuple[Path, OnlineRetailReport],
) -> None:
    events = _events(loaded[0]).set_index("event_id")["event_timestamp"]
    utc = dt.UTC
    assert events["489434-0001"] == dt.datetime(2009, 12, 1, 7, 45, tzinfo=utc)  # GMT = UTC
    assert events["512312-0001"] == dt.datetime(2010, 6, 15, 7, 15, tzinfo=utc)  # 08:15 BST
    assert events["529799-0001"] == dt.datetime(2010, 10, 31, 10, 3, tzinfo=utc)  # after the change back
    march = _raw().query("InvoiceDate.str.startswith('2010-03-28') and `Customer ID`.notna()").iloc[0]
    local = pd.Timestamp(march["InvoiceDate"]).tz_localize("Europe/London")
    assert events[f"{march['Invoice']}-0001"] == local.tz_convert("UTC")


def test_one_landing_folder_per_utc_day_with_contract_schemas(
    loaded: tuple[Path, OnlineRetailReport],
) -> None:
    landing, report = loaded
    days = list_partitions(landing)
    assert len(days) == report.days == 11
    assert (report.first_day, report.last_day) == (dt.date(2009, 12, 1), dt.date(2010, 10, 31))
    for day in days:
        table = pq.read_table(landing / f"date={day}" / "events.parquet")
        assert table.schema.equals(EVENTS_SCHEMA)
        assert {t.date() for t in table.column("event_timestamp").to_pylist()} == {day}
        items = landing / f"date={day}" / "items.parquet"
        if items.exists():  # only days on which some product is bought for the first time
            assert pq.read_table(items).schema.equals(ITEMS_SCHEMA)
    assert (landing / f"date={days[0]}" / "items.parquet").exists()


def test_items_land_on_their_first_purchase_day(loaded: tuple[Path, OnlineRetailReport]) -> None:
    landing, report = loaded
    items = _items(landing)
    events = _events(landing)
    assert items["item_id"].is_unique
    assert len(items) == report.items == report.kept.stock_codes
    first = events.groupby("item_id")["event_timestamp"].min()
    assert (items.set_index("item_id")["first_seen"] == first[items["item_id"]].to_numpy()).all()


def test_title_is_most_frequent_description_and_price_is_median(
    loaded: tuple[Path, OnlineRetailReport],
) -> None:
    items = _items(loaded[0]).set_index("item_id")
    raw = _raw()
    kept = raw[raw["Customer ID"].notna() & ~raw["Invoice"].str.startswith("C") & (raw["Price"] > 0)]
    bag = kept[kept["StockCode"] == "20725"]
    assert bag["Description"].nunique() > 1
    assert items.loc["20725", "title"] == bag["Description"].value_counts().index[0]
    assert items.loc["20725", "price"] == pytest.approx(bag["Price"].median())
    # 20685: "RED SPOTTY COIR DOORMAT" and "DOOR MAT RED SPOT" ten lines each; a tie goes alphabetically
    assert items.loc["20685", "title"] == "DOOR MAT RED SPOT"
    assert items.loc["20685", "category"] == "home decor"


def test_category_comes_from_title_keywords_first_rule_wins() -> None:
    assert category_of("WHITE HANGING HEART T-LIGHT HOLDER") == "candles and lights"
    assert category_of("PAPER CHAIN KIT 50'S CHRISTMAS") == "christmas"
    assert category_of("RED SPOTTY CHARLOTTE BAG") == "bags"
    assert category_of("JUMBO BAG RED RETROSPOT") == "bags"
    assert category_of("HEART OF WICKER SMALL") == "home decor"
    assert category_of("SPRING CLEANING") == "other"
    assert category_of("BRING") == "other"  # keywords match whole words only ("RING")


def test_report_is_written_as_json_beside_the_landing_days(loaded: tuple[Path, OnlineRetailReport]) -> None:
    landing, report = loaded
    path = landing / REPORT_FILE
    assert report.report_path == str(path)
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["dropped"] == dict(report.dropped)
    assert written["kept"]["rows"] == report.kept.rows
    assert written["first_day"] == "2009-12-01"
    assert len(pd.read_parquet(landing, columns=["event_id"])) >= report.kept.rows  # dataset readers skip it


def test_window_writes_only_its_days_and_counts_the_rest(shoprec_home: Settings) -> None:
    manifest, report = load_online_retail(
        SAMPLE, shoprec_home.landing_dir, start=dt.date(2010, 3, 1), end=dt.date(2010, 6, 30)
    )
    assert manifest.days == tuple(list_partitions(shoprec_home.landing_dir))
    assert all(dt.date(2010, 3, 1) <= d <= dt.date(2010, 6, 30) for d in manifest.days)
    assert len(manifest.days) == 6
    assert report.dropped["outside_window"] == 7854 - report.kept.rows
    assert report.dropped["cancellation"] == 161  # other rules still count the whole file
    assert report.window == (dt.date(2010, 3, 1), dt.date(2010, 6, 30))


def test_rerun_rewrites_the_same_bytes(tmp_path: Path, loaded: tuple[Path, OnlineRetailReport]) -> None:
    landing, _ = loaded
    load_online_retail(SAMPLE, tmp_path / "again")
    files = sorted(p.relative_to(landing) for p in landing.rglob("*.parquet"))
    assert all((landing / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)


def test_non_positive_quantity_with_customer_is_dropped(tmp_path: Path) -> None:
    raw = _raw()
    raw.loc[raw.index[0], "Quantity"] = -3  # 489434 line 1, customer 13085
    landing, report = _load_frame(raw, tmp_path)
    assert report.dropped["non_positive_quantity"] == 1
    assert "489434-0001" not in set(_events(landing)["event_id"])


def test_missing_description_takes_title_from_other_lines_or_drops(tmp_path: Path) -> None:
    raw = _raw()
    doormat = raw.index[(raw["StockCode"] == "20685") & raw["Customer ID"].notna()]
    raw.loc[doormat[0], "Description"] = None
    only_line = raw.index[raw["StockCode"] == "SP1002"]
    raw.loc[only_line, "Description"] = None
    landing, report = _load_frame(raw, tmp_path)
    assert report.special["description_from_other_lines"] == 1
    assert report.dropped["missing_title"] == int(
        (raw.loc[only_line, "Customer ID"].notna() & ~raw.loc[only_line, "Invoice"].str.startswith("C")).sum()
    )
    items = _items(landing).set_index("item_id")
    assert items.loc["20685", "title"] == "DOOR MAT RED SPOT"
    assert "SP1002" not in items.index


def test_old_column_spelling_csv_with_us_dates_gives_the_same_events(tmp_path: Path) -> None:
    # The whole sample: its first 1,500 rows are one day, the 1st, which month-first and day-first
    # read alike (refused as ambiguous); 28 March and 15 June decide.
    raw = _raw()
    parquet = tmp_path / "new.parquet"
    raw.to_parquet(parquet, index=False)
    old = raw.rename(columns={"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"})
    old["InvoiceDate"] = pd.to_datetime(old["InvoiceDate"]).map(
        lambda t: f"{t.month}/{t.day}/{t.year} {t:%H:%M}"
    )
    csv = tmp_path / "old.csv"
    old.to_csv(csv, index=False)
    load_online_retail(parquet, tmp_path / "a")
    _, report = load_online_retail(csv, tmp_path / "b")
    assert report.dropped["unparseable_timestamp"] == 0
    pd.testing.assert_frame_equal(_events(tmp_path / "a"), _events(tmp_path / "b"))
    pd.testing.assert_frame_equal(_items(tmp_path / "a"), _items(tmp_path / "b"))


def test_xlsx_sheets_are_read_and_overlapping_invoices_dropped(tmp_path: Path) -> None:
    raw = _raw()
    first = raw[raw["Invoice"].isin(["489434", "489435"])]
    second = raw[raw["Invoice"].isin(["489435", "489436"])]
    path = tmp_path / "two_sheets.xlsx"
    with pd.ExcelWriter(path) as writer:
        first.to_excel(writer, sheet_name="Year 2009-2010", index=False)
        second.to_excel(writer, sheet_name="Year 2010-2011", index=False)
    manifest, report = load_online_retail(path, tmp_path / "landing")
    assert report.dropped["overlapping_sheet"] == int((raw["Invoice"] == "489435").sum())
    assert manifest.n_events == len(first) + int((raw["Invoice"] == "489436").sum())
    customers = raw.loc[raw["Invoice"].isin(["489434", "489435", "489436"]), "Customer ID"]
    assert set(_events(tmp_path / "landing")["user_id"]) == set(customers.astype(int).astype(str))


def test_file_without_online_retail_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    pd.DataFrame({"Invoice": ["1"], "StockCode": ["85048"]}).to_csv(path, index=False)
    with pytest.raises(ContractError, match="missing columns: Description"):
        load_online_retail(path, tmp_path / "landing")


def test_drop_reasons_are_documented_in_rule_order() -> None:
    assert DROP_REASONS[:6] == (
        "overlapping_sheet",
        "repeated_delivery",
        "unparseable_timestamp",
        "cancellation",
        "adjustment_invoice",
        "missing_customer",
    )
    assert DROP_REASONS[-1] == "outside_window"


# --- exports as shops write them (issue 15) ----------------------------------------------------------


def _uci_original(raw: pd.DataFrame, date_format: str) -> pd.DataFrame:
    """The original UCI "Online Retail" column set, InvoiceDate as text in ``date_format``."""
    old = raw.rename(columns={"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"})
    old["InvoiceDate"] = pd.to_datetime(old["InvoiceDate"]).dt.strftime(date_format)
    return old


@pytest.mark.parametrize(
    ("date_format", "description"),
    [
        ("%-m/%-d/%y %-H:%M", "UCI Online Retail: month-first, 2-digit year, 12/1/10 8:26"),
        ("%d/%m/%Y %H:%M", "day-first, 4-digit year, 01/12/2010 08:26"),
        ("%d/%m/%y %H:%M:%S", "day-first, 2-digit year, seconds"),
        ("%d.%m.%Y %H:%M", "European dots, 01.12.2010 08:26"),
    ],
)
def test_text_dates_in_any_common_format_give_the_same_events(
    tmp_path: Path, date_format: str, description: str
) -> None:
    raw = _raw()  # three days, two of them after the 12th: only one reading parses them all
    raw.to_parquet(tmp_path / "reference.parquet", index=False)
    csv = tmp_path / "export.csv"
    _uci_original(raw, date_format).to_csv(csv, index=False)
    load_online_retail(tmp_path / "reference.parquet", tmp_path / "a")
    _, report = load_online_retail(csv, tmp_path / "b")
    assert report.dropped["unparseable_timestamp"] == 0, description
    pd.testing.assert_frame_equal(_events(tmp_path / "a"), _events(tmp_path / "b"))


def test_date_format_is_chosen_once_for_the_whole_column_never_per_row(tmp_path: Path) -> None:
    """Month-first dates with a few day-first rows: the day-first rows whose day is > 12 do not parse as
    month-first and are dropped, not guessed; those whose day is <= 12 are read month-first, as the rest."""
    raw = _raw().reset_index(drop=True)
    old = _uci_original(raw, "%m/%d/%Y %H:%M")
    stamps = pd.to_datetime(raw["InvoiceDate"])
    odd = raw.index[stamps.dt.day > 12][:5]
    old.loc[odd, "InvoiceDate"] = stamps[odd].dt.strftime("%d/%m/%Y %H:%M")
    csv = tmp_path / "mixed.csv"
    old.to_csv(csv, index=False)
    _, report = load_online_retail(csv, tmp_path / "landing")
    assert report.dropped["unparseable_timestamp"] == 5


def test_ambiguous_dates_are_read_in_the_order_that_keeps_invoices_in_time(tmp_path: Path) -> None:
    """Every day <= 12 (1-12 November, then 1-12 December): both readings parse every value, but
    day-first would put 12 January after 11 December; month-first keeps the export in time order."""
    raw = _raw().head(2400).reset_index(drop=True)
    days = [dt.date(2010, month, day) for month in (11, 12) for day in range(1, 13)]
    raw["InvoiceDate"] = [
        pd.Timestamp(days[i // 100]) + pd.Timedelta(hours=9, minutes=i % 100) for i in range(len(raw))
    ]
    raw.to_parquet(tmp_path / "reference.parquet", index=False)
    _uci_original(raw, "%m/%d/%Y %H:%M").to_csv(tmp_path / "export.csv", index=False)
    load_online_retail(tmp_path / "reference.parquet", tmp_path / "a")
    load_online_retail(tmp_path / "export.csv", tmp_path / "b")
    pd.testing.assert_frame_equal(_events(tmp_path / "a"), _events(tmp_path / "b"))


def test_dates_no_order_can_tell_apart_are_refused(tmp_path: Path) -> None:
    """One day, the 1st: month-first and day-first read every row alike; the file is refused."""
    raw = _raw()
    one_day = raw[pd.to_datetime(raw["InvoiceDate"]).dt.date == dt.date(2009, 12, 1)]
    _uci_original(one_day, "%m/%d/%Y %H:%M").to_csv(tmp_path / "export.csv", index=False)
    with pytest.raises(ContractError, match=r"export.csv: InvoiceDate is ambiguous: %m/%d/%Y %H:%M and "):
        load_online_retail(tmp_path / "export.csv", tmp_path / "landing")


def test_excel_serial_dates_give_the_same_events(tmp_path: Path) -> None:
    raw = _raw()
    raw.to_parquet(tmp_path / "reference.parquet", index=False)
    serial = raw.copy()
    serial["InvoiceDate"] = (pd.to_datetime(raw["InvoiceDate"]) - pd.Timestamp("1899-12-30")) / pd.Timedelta(
        days=1
    )
    serial.to_csv(tmp_path / "serial.csv", index=False)
    load_online_retail(tmp_path / "reference.parquet", tmp_path / "a")
    _, report = load_online_retail(tmp_path / "serial.csv", tmp_path / "b")
    assert report.dropped["unparseable_timestamp"] == 0
    pd.testing.assert_frame_equal(_events(tmp_path / "a"), _events(tmp_path / "b"))


def test_customer_ids_written_as_floats_or_text_are_one_user(tmp_path: Path) -> None:
    raw = _raw().head(3000)
    text = raw.astype({"Customer ID": "string"})
    customers = pd.to_numeric(raw["Customer ID"])
    text["Customer ID"] = [
        None if pd.isna(c) else (f"{c:.1f}" if i % 2 else f"{int(c)}") for i, c in enumerate(customers)
    ]
    text.to_csv(tmp_path / "mixed_ids.csv", index=False)
    raw.to_parquet(tmp_path / "reference.parquet", index=False)
    load_online_retail(tmp_path / "reference.parquet", tmp_path / "a")
    load_online_retail(tmp_path / "mixed_ids.csv", tmp_path / "b")
    users = _events(tmp_path / "b")["user_id"]
    assert not users.str.contains(".", regex=False).any()
    assert list(users) == list(_events(tmp_path / "a")["user_id"])


def test_european_export_with_bom_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    raw = _raw()
    raw.to_parquet(tmp_path / "reference.parquet", index=False)
    eu = _uci_original(raw, "%d.%m.%Y %H:%M")
    eu["UnitPrice"] = eu["UnitPrice"].map(lambda p: f"{p:.2f}".replace(".", ","))
    eu.to_csv(tmp_path / "eu.csv", index=False, sep=";", encoding="utf-8-sig")
    load_online_retail(tmp_path / "reference.parquet", tmp_path / "a")
    _, report = load_online_retail(tmp_path / "eu.csv", tmp_path / "b")
    assert report.dropped["unparseable_timestamp"] == 0
    pd.testing.assert_frame_equal(_events(tmp_path / "a"), _events(tmp_path / "b"))


@pytest.mark.parametrize("placeholder", [0.0, -1.0])
def test_placeholder_customer_is_a_missing_customer_even_when_it_holds_few_rows(
    placeholder: float, tmp_path: Path
) -> None:
    """A handful of lines with customer 0 (or -1): below any dominant-user share, still no customer."""
    raw = _raw()
    few = raw.index[raw["Customer ID"].notna() & ~raw["Invoice"].str.startswith(("C", "A"))][:7]
    raw.loc[few, "Customer ID"] = placeholder
    landing, report = _load_frame(raw, tmp_path)
    assert report.dropped["missing_customer"] == 1539 + 7
    assert report.kept.rows == 7854 - 7
    assert not set(_events(landing)["user_id"]) & {"0", "-1", "0.0"}


def test_a_delivery_appended_twice_is_counted_once(tmp_path: Path) -> None:
    """The same export concatenated twice: the second copy's invoice blocks repeat the first's line for
    line and are dropped as repeated_delivery; lines repeated inside one invoice block stay events."""
    raw = _raw()
    raw.to_parquet(tmp_path / "once.parquet", index=False)
    pd.concat([raw, raw], ignore_index=True).to_parquet(tmp_path / "twice.parquet", index=False)
    load_online_retail(tmp_path / "once.parquet", tmp_path / "a")
    _, report = load_online_retail(tmp_path / "twice.parquet", tmp_path / "b")
    assert report.dropped["repeated_delivery"] == len(raw)
    assert report.special["repeated_identical_lines_kept"] == 155
    pd.testing.assert_frame_equal(_events(tmp_path / "a"), _events(tmp_path / "b"))
