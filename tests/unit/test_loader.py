"""Contract files (CSV/Parquet) -> landing day folders: column checks, typing, UTC day split, rewrites."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.config import Settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, ContractError, list_partitions
from tasks.sources.loader import load_contract_files


def _events_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4"],
            "user_id": ["u1", "u2", "u1", "u3"],
            "item_id": ["i1", "i2", "i2", "i1"],
            "event_type": ["view", "click", "purchase", "view"],
            # e2 is 2026-09-01 23:30 at UTC-2, i.e. 2026-09-02 01:30 UTC; e4 is naive, read as UTC
            "event_timestamp": [
                "2026-09-01T10:00:00Z",
                "2026-09-01T23:30:00-02:00",
                "2026-09-02T08:15:00+00:00",
                "2026-09-03T00:00:00",
            ],
            "quantity": ["1", "1", "2", "1"],
            "unit_price": ["9.99", "", "4.5", "9.99"],
            "session_id": ["s1", "s2", "s3", ""],
            "country": ["France", "Germany", "France", "Spain"],
        }
    )


def _items_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2"],
            "title": ["Vintage Teal Teapot", "Rustic Plant Pot"],
            "category": ["kitchen", "garden"],
            "price": [9.99, 4.5],
            "first_seen": pd.to_datetime(["2026-09-01T00:00:00Z", "2026-09-02T06:00:00Z"]),
        }
    )


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _day(landing: Path, day: str, table: str = "events") -> pd.DataFrame:
    return pq.read_table(landing / f"date={day}" / f"{table}.parquet").to_pandas()


def test_events_are_split_by_utc_day(tmp_path: Path, shoprec_home: Settings) -> None:
    landing = shoprec_home.landing_dir
    manifest = load_contract_files([_csv(_events_frame(), tmp_path / "events.csv")], landing)
    assert manifest.days == (dt.date(2026, 9, 1), dt.date(2026, 9, 2), dt.date(2026, 9, 3))
    assert list_partitions(landing) == list(manifest.days)
    assert list(_day(landing, "2026-09-01")["event_id"]) == ["e1"]
    second = _day(landing, "2026-09-02")
    assert list(second["event_id"]) == ["e2", "e3"]
    assert second["event_timestamp"].iloc[0] == pd.Timestamp("2026-09-02T01:30:00Z")
    assert list(_day(landing, "2026-09-03")["event_id"]) == ["e4"]


def test_values_get_the_contract_types_and_schema(tmp_path: Path, shoprec_home: Settings) -> None:
    load_contract_files([_csv(_events_frame(), tmp_path / "events.csv")], shoprec_home.landing_dir)
    table = pq.read_table(shoprec_home.landing_dir / "date=2026-09-02" / "events.parquet")
    assert table.schema.equals(EVENTS_SCHEMA)
    assert table.column("quantity").to_pylist() == [1, 2]
    assert table.column("unit_price").to_pylist() == [None, 4.5]


def test_manifest_counts_what_was_written(tmp_path: Path, shoprec_home: Settings) -> None:
    paths = [_csv(_events_frame(), tmp_path / "events.csv"), tmp_path / "items.parquet"]
    _items_frame().to_parquet(paths[1], index=False)
    manifest = load_contract_files(paths, shoprec_home.landing_dir)
    assert (manifest.source, manifest.n_events, manifest.n_items, manifest.n_users) == (
        "contract_files",
        4,
        2,
        3,
    )
    assert manifest.landing_dir == str(shoprec_home.landing_dir)


def test_items_land_on_their_first_seen_day(tmp_path: Path, shoprec_home: Settings) -> None:
    path = tmp_path / "catalog.parquet"
    _items_frame().to_parquet(path, index=False)
    events = _csv(_events_frame(), tmp_path / "events.csv")
    load_contract_files([events, path], shoprec_home.landing_dir)
    first = pq.read_table(shoprec_home.landing_dir / "date=2026-09-01" / "items.parquet")
    assert first.schema.equals(ITEMS_SCHEMA)
    assert first.column("item_id").to_pylist() == ["i1"]
    assert list(_day(shoprec_home.landing_dir, "2026-09-02", "items")["item_id"]) == ["i2"]
    assert not (shoprec_home.landing_dir / "date=2026-09-03" / "items.parquet").exists()


def test_null_in_required_column_lands_for_the_ingest_gate(tmp_path: Path, shoprec_home: Settings) -> None:
    frame = _events_frame()
    frame.loc[0, "user_id"] = None
    load_contract_files([_csv(frame, tmp_path / "events.csv")], shoprec_home.landing_dir)
    table = pq.read_table(shoprec_home.landing_dir / "date=2026-09-01" / "events.parquet")
    assert table.column("user_id").to_pylist() == [None]
    assert table.schema.field("user_id").nullable


def test_missing_column_is_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    path = _csv(_events_frame().drop(columns=["session_id"]), tmp_path / "events.csv")
    with pytest.raises(ContractError, match="missing columns: session_id"):
        load_contract_files([path], shoprec_home.landing_dir)
    assert not shoprec_home.landing_dir.exists()


def test_personal_data_column_is_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    path = _csv(_events_frame().assign(email="a@example.org"), tmp_path / "events.csv")
    with pytest.raises(ContractError, match="personal-data columns are refused: email"):
        load_contract_files([path], shoprec_home.landing_dir)


def test_unexpected_column_is_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    path = _csv(_events_frame().assign(referrer="news"), tmp_path / "events.csv")
    with pytest.raises(ContractError, match=r"unexpected columns .*: referrer"):
        load_contract_files([path], shoprec_home.landing_dir)


def test_unparseable_timestamp_is_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    frame = _events_frame()
    frame.loc[1, "event_timestamp"] = "yesterday"
    with pytest.raises(ContractError, match="1 rows have a null or unparseable event_timestamp"):
        load_contract_files([_csv(frame, tmp_path / "events.csv")], shoprec_home.landing_dir)


def test_non_numeric_quantity_is_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    frame = _events_frame()
    frame.loc[2, "quantity"] = "two"
    with pytest.raises(ContractError, match="column quantity has non-numeric values"):
        load_contract_files([_csv(frame, tmp_path / "events.csv")], shoprec_home.landing_dir)


def test_one_bad_file_writes_nothing(tmp_path: Path, shoprec_home: Settings) -> None:
    good = _csv(_events_frame(), tmp_path / "good.csv")
    bad = _csv(_events_frame().drop(columns=["country"]), tmp_path / "bad.csv")
    with pytest.raises(ContractError, match=r"bad\.csv: missing columns: country"):
        load_contract_files([good, bad], shoprec_home.landing_dir)
    assert list_partitions(shoprec_home.landing_dir) == []


def test_reload_replaces_only_the_days_it_writes(tmp_path: Path, shoprec_home: Settings) -> None:
    landing = shoprec_home.landing_dir
    load_contract_files([_csv(_events_frame(), tmp_path / "all.csv")], landing)
    before = (landing / "date=2026-09-01" / "events.parquet").read_bytes()
    (landing / "date=2026-09-02" / "events_extra.csv").write_text("stale\n")
    later = _events_frame().iloc[[2]].assign(event_id="e9")
    load_contract_files([_csv(later, tmp_path / "later.csv")], landing)
    assert list(_day(landing, "2026-09-02")["event_id"]) == ["e9"]
    assert sorted(p.name for p in (landing / "date=2026-09-02").iterdir()) == ["events.parquet"]
    assert (landing / "date=2026-09-01" / "events.parquet").read_bytes() == before
    assert [p.name for p in landing.iterdir() if p.name.startswith(".")] == []


def test_same_rows_in_any_order_write_identical_bytes(tmp_path: Path, shoprec_home: Settings) -> None:
    load_contract_files([_csv(_events_frame(), tmp_path / "a.csv")], tmp_path / "a")
    shuffled = _events_frame().iloc[::-1]
    shuffled.to_parquet(tmp_path / "b.parquet", index=False)
    load_contract_files([tmp_path / "b.parquet"], tmp_path / "b")
    for day in ("2026-09-01", "2026-09-02", "2026-09-03"):
        name = f"date={day}/events.parquet"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_unknown_file_kind_is_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    path = tmp_path / "events.json"
    path.write_text("[]")
    with pytest.raises(ContractError, match=r"only \.csv and \.parquet"):
        load_contract_files([path], shoprec_home.landing_dir)


def test_user_ids_written_as_floats_are_the_same_user(tmp_path: Path, shoprec_home: Settings) -> None:
    """``17850.0`` (pandas writes an id column with gaps as floats) and ``17850`` are one customer."""
    frame = _events_frame()
    frame["user_id"] = ["17850.0", "17850", "17850.00", "E17850.5"]
    load_contract_files([_csv(frame, tmp_path / "events.csv")], shoprec_home.landing_dir)
    landed = pd.concat(
        [_day(shoprec_home.landing_dir, d) for d in ("2026-09-01", "2026-09-02", "2026-09-03")]
    )
    assert sorted(landed["user_id"]) == ["17850", "17850", "17850", "E17850.5"]


def test_european_csv_with_bom_semicolons_and_decimal_commas(tmp_path: Path, shoprec_home: Settings) -> None:
    """The same events written as a European spreadsheet exports them read as the plain CSV does."""
    frame = _events_frame()
    frame["unit_price"] = ["1.209,99", "", "4,5", "9,99"]
    path = tmp_path / "events_eu.csv"
    frame.to_csv(path, index=False, sep=";", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfevent_id;")
    load_contract_files([path], shoprec_home.landing_dir)
    eu = pd.concat([_day(shoprec_home.landing_dir, d) for d in ("2026-09-01", "2026-09-02", "2026-09-03")])
    assert list(eu["unit_price"].fillna(-1.0)) == [1209.99, -1.0, 4.5, 9.99]
    assert list(eu["event_id"]) == ["e1", "e2", "e3", "e4"]


# --- timestamps as shops export them (issue 15): one format per column, shared with Online Retail ------


def _load_times(stamps: list[object], tmp_path: Path, landing: Path) -> list[pd.Timestamp]:
    frame = _events_frame()
    frame["event_timestamp"] = stamps
    load_contract_files([_csv(frame, tmp_path / "events.csv")], landing)
    landed = pd.concat([_day(landing, d.isoformat()) for d in list_partitions(landing)])
    return list(landed.set_index("event_id").loc[["e1", "e2", "e3", "e4"], "event_timestamp"])


def test_iso_offsets_are_converted_to_utc_each_with_its_own(tmp_path: Path, shoprec_home: Settings) -> None:
    """A naive value beside values with offsets is UTC, not the first value's offset (pandas alone
    reads "2010-12-01T09:00:00" after a "+01:00" value as +01:00)."""
    stamps = _load_times(
        [
            "2010-12-01T08:26:00+01:00",
            "2010-12-01T09:00:00",
            "2010-12-01T23:30:00-02:00",
            "2010-12-01T08:26Z",
        ],
        tmp_path,
        shoprec_home.landing_dir,
    )
    assert stamps == [
        pd.Timestamp("2010-12-01T07:26:00Z"),
        pd.Timestamp("2010-12-01T09:00:00Z"),
        pd.Timestamp("2010-12-02T01:30:00Z"),
        pd.Timestamp("2010-12-01T08:26:00Z"),
    ]


@pytest.mark.parametrize(
    ("stamps", "expected_day_of_e4"),
    [
        (["12/1/10 8:26", "12/1/10 9:00", "12/13/10 10:00", "12/2/10 0:00"], "2010-12-02"),  # month-first
        (["01/12/2010 08:26", "01/12/2010 09:00", "13/12/2010 10:00", "02/12/2010 00:00"], "2010-12-02"),
        (["01.12.10 08:26", "01.12.10 09:00", "13.12.10 10:00", "02.12.10 00:00"], "2010-12-02"),
        ([40513.35138889, 40513.375, 40525.41666667, 40514.0], "2010-12-02"),  # Excel serial days
    ],
    ids=["month-first-2-digit-year", "day-first-4-digit-year", "day-first-dots", "excel-serial"],
)
def test_text_and_excel_dates_are_read_in_the_columns_one_format_as_utc(
    stamps: list[object], expected_day_of_e4: str, tmp_path: Path, shoprec_home: Settings
) -> None:
    landed = _load_times(stamps, tmp_path, shoprec_home.landing_dir)
    assert landed[0] == pd.Timestamp("2010-12-01T08:26:00Z")  # naive: read as UTC
    assert landed[2] == pd.Timestamp("2010-12-13T10:00:00Z")
    assert landed[3] == pd.Timestamp(f"{expected_day_of_e4}T00:00:00Z")


def test_a_column_mixing_formats_is_refused_in_one_line(tmp_path: Path, shoprec_home: Settings) -> None:
    frame = _events_frame()
    frame["event_timestamp"] = [
        "2010-12-01T08:26:00",
        "2010-12-01T09:00:00",
        "13/12/2010 10:00",
        "2010-12-02",
    ]
    path = _csv(frame, tmp_path / "events.csv")
    with pytest.raises(ContractError) as refused:
        load_contract_files([path], shoprec_home.landing_dir)
    assert str(refused.value) == (
        f"{path}: 1 rows have a null or unparseable event_timestamp (first: '13/12/2010 10:00'; "
        "the column reads as ISO 8601, detected once from all its values)"
    )
    assert list_partitions(shoprec_home.landing_dir) == []


def test_dates_no_format_can_tell_apart_are_refused(tmp_path: Path, shoprec_home: Settings) -> None:
    frame = _events_frame()
    frame["event_timestamp"] = [
        "01/02/2010 08:00",
        "01/02/2010 09:00",
        "01/02/2010 10:00",
        "01/02/2010 11:00",
    ]
    with pytest.raises(ContractError, match=r"event_timestamp is ambiguous: %m/%d/%Y %H:%M and %d/%m/%Y"):
        load_contract_files([_csv(frame, tmp_path / "events.csv")], shoprec_home.landing_dir)


# --- placeholder customer ids (issue 15) ---------------------------------------------------------------


@pytest.mark.parametrize("placeholder", ["0", "-1", "0.0", "nan", "NULL", " ", "000"])
def test_placeholder_user_ids_land_as_missing_for_the_gate(
    placeholder: str, tmp_path: Path, shoprec_home: Settings
) -> None:
    """An "unknown customer" written as 0, -1, blank, nan ...: a missing user (the gate quarantines the row
    as user_id_not_null), never one real customer, whatever share of the rows it holds."""
    frame = _events_frame()
    frame["user_id"] = [placeholder, "17850", placeholder, "0042"]
    manifest = load_contract_files([_csv(frame, tmp_path / "events.csv")], shoprec_home.landing_dir)
    landed = pd.concat([_day(shoprec_home.landing_dir, d.isoformat()) for d in manifest.days])
    assert list(landed.set_index("event_id").loc[["e1", "e2", "e3", "e4"], "user_id"]) == [
        None,
        "17850",
        None,
        "0042",
    ]
    assert manifest.n_users == 2


def test_float_zero_user_id_in_parquet_is_missing(tmp_path: Path, shoprec_home: Settings) -> None:
    frame = _events_frame()
    frame["user_id"] = [0.0, 17850.0, float("nan"), 12.0]
    frame.to_parquet(tmp_path / "events.parquet", index=False)
    manifest = load_contract_files([tmp_path / "events.parquet"], shoprec_home.landing_dir)
    landed = pd.concat([_day(shoprec_home.landing_dir, d.isoformat()) for d in manifest.days])
    assert sorted(landed["user_id"].fillna("<missing>")) == ["12", "17850", "<missing>", "<missing>"]
