"""Real-world export variants of Online Retail (II) invoice lines, each with its expected outcome.

Every variant is written at test time from a canonical frame in the Online Retail II column set
(``Invoice, StockCode, Description, Quantity, InvoiceDate, Price, Customer ID, Country``, InvoiceDate
as London wall-clock datetimes or ISO strings): the way other shops and other copies of the data set
export the same rows.  ``tests/unit/test_export_variants.py`` runs each of :data:`VARIANTS` through
``shoprec load-online-retail`` and checks its outcome against the canonical frame's, and each of
:data:`EVENT_VARIANTS` (the same rows as a contract events file, written other ways) through
``shoprec load``.

Outcomes:

* :class:`Same`: lossless; the same events, items and counts as the canonical file (``dropped`` gives
  the drop counts that differ from the canonical report's, e.g. a second copy of every row).
* :class:`Shifted`: naive times written on another zone's wall clock; nothing in the file says so, so
  the documented rule (naive = Europe/London) reads them: the same rows, each at the instant its
  wall-clock time has in London.
* :class:`Fails`: refused with the exact message (``{path}`` stands for the file) and exit code,
  nothing written.

Data: the variants are derived from the UCI Online Retail II data set (Daqing Chen, UCI Machine Learning
Repository, https://doi.org/10.24432/C5CG6D, CC BY 4.0; see tests/data/ATTRIBUTION.md).  Nothing derived
is committed: the files are generated in the test's temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

# The shared data sits beside the checkout (CI clones next to a copy of shared/).
SHARED_FILE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "online_retail_ii"
    / "online_retail_II_2009-2010.parquet"
)


def shared_file() -> Path:
    """The shared Online Retail II file; the test fails (never skips) when it is missing."""
    if not SHARED_FILE.is_file():
        pytest.fail(f"the shared Online Retail II file is missing: {SHARED_FILE}")
    return SHARED_FILE


# The UCI "Online Retail" (2011) column spelling; Online Retail II renamed these three.
UCI_ONLINE_RETAIL_COLUMNS = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}
LONDON = "Europe/London"
EXCEL_EPOCH = pd.Timestamp("1899-12-30")


def _no_change(frame: pd.DataFrame) -> Mapping[str, int]:
    return {}


@dataclass(frozen=True)
class Same:
    # drop counts that differ from the canonical report's, from the canonical frame
    dropped: Callable[[pd.DataFrame], Mapping[str, int]] = _no_change


@dataclass(frozen=True)
class Shifted:
    wall_clock_zone: str


@dataclass(frozen=True)
class Fails:
    message: Callable[[pd.DataFrame], str]  # of the canonical frame; "{path}" stands for the file
    exit_code: int = 1


Outcome = Same | Shifted | Fails


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    write: Callable[[pd.DataFrame, Path], Path]  # (canonical frame, folder) -> the file written
    outcome: Outcome


def canonical_slice(path: Path, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """The rows of ``path`` whose InvoiceDate falls on the days ``first`` to ``last``, in file order."""
    frame = pd.read_parquet(path)
    day = pd.to_datetime(frame["InvoiceDate"]).dt.normalize()
    return frame[(day >= first) & (day <= last)].reset_index(drop=True)


def _stamps(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["InvoiceDate"])


def _with_dates(frame: pd.DataFrame, dates: pd.Series) -> pd.DataFrame:
    return frame.assign(InvoiceDate=dates)


def _csv(name: str, **options: object) -> Callable[[pd.DataFrame, Path], Path]:
    def write(frame: pd.DataFrame, folder: Path) -> Path:
        path = folder / name
        frame.to_csv(path, index=False, **options)
        return path

    return write


def _parquet(frame: pd.DataFrame, folder: Path, name: str) -> Path:
    path = folder / name
    frame.to_parquet(path, index=False)
    return path


def uci_online_retail(frame: pd.DataFrame, folder: Path) -> Path:
    """The original UCI "Online Retail" export: old column names, dates as ``12/1/10 8:26``."""
    old = frame.rename(columns=UCI_ONLINE_RETAIL_COLUMNS)
    old = _with_dates(old, _stamps(frame).dt.strftime("%-m/%-d/%y %-H:%M"))
    return _csv("Online Retail.csv")(old, folder)


def day_first_4_digit_year(frame: pd.DataFrame, folder: Path) -> Path:
    return _csv("day_first.csv")(_with_dates(frame, _stamps(frame).dt.strftime("%d/%m/%Y %H:%M")), folder)


def excel_serial_dates(frame: pd.DataFrame, folder: Path) -> Path:
    days = (_stamps(frame) - EXCEL_EPOCH) / pd.Timedelta(days=1)
    return _csv("excel_serial.csv")(_with_dates(frame, days), folder)


def iso_with_offsets(zone: str) -> Callable[[pd.DataFrame, Path], Path]:
    """ISO strings with offsets, on the wall clock of ``zone`` (the same instants as London times)."""

    def write(frame: pd.DataFrame, folder: Path) -> Path:
        instants = _stamps(frame).dt.tz_localize(LONDON).dt.tz_convert(zone)
        dates = instants.map(lambda t: t.isoformat())
        return _parquet(_with_dates(frame, dates), folder, f"iso_{zone.replace('/', '_')}.parquet")

    return write


def naive_wall_clock(zone: str) -> Callable[[pd.DataFrame, Path], Path]:
    """Times without an offset on the wall clock of ``zone`` (a shop system set to another zone)."""

    def write(frame: pd.DataFrame, folder: Path) -> Path:
        wall = _stamps(frame).dt.tz_localize(LONDON).dt.tz_convert(zone).dt.tz_localize(None)
        return _csv(f"naive_{zone.replace('/', '_')}.csv")(_with_dates(frame, wall.astype(str)), folder)

    return write


def european(frame: pd.DataFrame, folder: Path) -> Path:
    """A European spreadsheet export: BOM, ``;`` separator, decimal commas, ``01.12.2009 07:45``."""
    eu = _with_dates(frame, _stamps(frame).dt.strftime("%d.%m.%Y %H:%M"))
    eu["Price"] = eu["Price"].map(lambda p: f"{p:.2f}".replace(".", ","))
    return _csv("european.csv", sep=";", encoding="utf-8-sig")(eu, folder)


def ids_as_text(frame: pd.DataFrame, folder: Path) -> Path:
    """Customer ids as text (``"13085"``) in a string column, missing ones null."""
    ids = pd.to_numeric(frame["Customer ID"]).map(lambda c: None if pd.isna(c) else str(int(c)))
    return _parquet(frame.assign(**{"Customer ID": ids.astype("string")}), folder, "ids_as_text.parquet")


def placeholder_customer(placeholder: str) -> Callable[[pd.DataFrame, Path], Path]:
    """Missing customers written as ``placeholder`` (some exports write 0 or -1 for "unknown")."""

    def write(frame: pd.DataFrame, folder: Path) -> Path:
        ids = frame["Customer ID"].map(lambda c: placeholder if pd.isna(c) else f"{c:.1f}")
        return _csv(f"placeholder_{placeholder}.csv")(frame.assign(**{"Customer ID": ids}), folder)

    return write


def appended_twice(frame: pd.DataFrame, folder: Path) -> Path:
    """The same delivery appended to itself (an export job that ran twice into one file)."""
    return _parquet(pd.concat([frame, frame], ignore_index=True), folder, "appended_twice.parquet")


def header_only(frame: pd.DataFrame, folder: Path) -> Path:
    return _csv("header_only.csv")(frame.head(0), folder)


def without_invoice_columns(frame: pd.DataFrame, folder: Path) -> Path:
    return _csv("no_invoice.csv")(frame.drop(columns=["Invoice", "StockCode"]), folder)


def empty_file(frame: pd.DataFrame, folder: Path) -> Path:
    path = folder / "empty.csv"
    path.write_bytes(b"")
    return path


def unparseable_dates(frame: pd.DataFrame, folder: Path) -> Path:
    """Dates no format reads (a spreadsheet that wrote its display text, "Tue 1st Dec")."""
    text = _stamps(frame).map(lambda t: f"{t:%a} {t.day}th {t:%b} {t:%H}h{t:%M}")
    return _csv("unparseable_dates.csv")(_with_dates(frame, text), folder)


def with_bot(frame: pd.DataFrame, day: pd.Timestamp, lines: int, bot_id: float) -> pd.DataFrame:
    """``frame`` plus ``lines`` invoice lines of one customer ``bot_id`` on ``day``: copies of the day's
    first ``lines`` sales to known customers, each on its own new invoice (``9`` + the original)."""
    on_day = _stamps(frame).dt.normalize() == day
    sales = frame[on_day & frame["Customer ID"].notna() & ~frame["Invoice"].str.match("[A-Za-z]")]
    bot = sales.head(lines).copy()
    bot["Invoice"] = "9" + bot["Invoice"] + "-" + pd.Series(range(len(bot)), index=bot.index).astype(str)
    bot["Customer ID"] = bot_id
    return pd.concat([frame, bot], ignore_index=True)


def _too_little_kept(reason: str) -> Callable[[pd.DataFrame], str]:
    def message(frame: pd.DataFrame) -> str:
        rows = len(frame)
        return (
            f"{{path}}: kept 0 of {rows:,} rows (0.0%; SHOPREC_MIN_KEPT_ROW_SHARE is 10%), so nothing was "
            f"written. Dropped rows by reason:\n  {reason:<24} {rows:>10,}"
        )

    return message


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "uci_online_retail",
        "UCI Online Retail columns (InvoiceNo, UnitPrice, CustomerID), dates 12/1/10 8:26",
        uci_online_retail,
        Same(),
    ),
    Variant("day_first_4_digit_year", "dates 01/12/2009 07:45", day_first_4_digit_year, Same()),
    Variant("excel_serial_dates", "dates as Excel serial days (40148.32)", excel_serial_dates, Same()),
    Variant(
        "iso_with_london_offsets",
        "ISO strings with the shop's own offsets",
        iso_with_offsets(LONDON),
        Same(),
    ),
    Variant(
        "iso_with_tokyo_offsets",
        "the same instants written on Tokyo's clock with +09:00",
        iso_with_offsets("Asia/Tokyo"),
        Same(),
    ),
    Variant(
        "naive_new_york_wall_clock",
        "times without offset from a system set to New York time",
        naive_wall_clock("America/New_York"),
        Shifted("America/New_York"),
    ),
    Variant("csv_with_bom", "UTF-8 with a byte-order mark", _csv("bom.csv", encoding="utf-8-sig"), Same()),
    Variant("european_csv", "BOM, ';' separator, decimal commas, 01.12.2009 07:45", european, Same()),
    Variant(
        "ids_as_floats", "Customer ID written 13085.0 (a float column with gaps)", _csv("floats.csv"), Same()
    ),
    Variant("ids_as_text", "Customer ID as text 13085", ids_as_text, Same()),
    Variant(
        "placeholder_customer_0",
        "unknown customers written 0: one 'customer' with a big share",
        placeholder_customer("0"),
        Same(),
    ),
    Variant(
        "placeholder_customer_minus_1", "unknown customers written -1", placeholder_customer("-1"), Same()
    ),
    Variant("placeholder_customer_nan", "unknown customers written nan", placeholder_customer("nan"), Same()),
    Variant(
        "delivery_appended_twice",
        "the same rows twice in one file",
        appended_twice,
        Same(dropped=lambda frame: {"repeated_delivery": len(frame)}),
    ),
    Variant(
        "header_only",
        "a CSV with the header and no rows",
        header_only,
        Fails(lambda frame: "{path}: no rows"),
    ),
    Variant(
        "wrong_columns",
        "no Invoice and StockCode columns",
        without_invoice_columns,
        Fails(lambda frame: "{path}: not an Online Retail file, missing columns: Invoice, StockCode"),
    ),
    Variant("empty_file", "0 bytes", empty_file, Fails(lambda frame: "{path}: empty file (0 bytes)")),
    Variant(
        "unparseable_dates",
        "dates as display text (Tue 1th Dec 07h45)",
        unparseable_dates,
        Fails(_too_little_kept("unparseable_timestamp")),
    ),
)


# --- the generic events file (``shoprec load``): contract events exported as shops write them -------


def event_times(name: str, text: Callable[[pd.Series], pd.Series]) -> Callable[[pd.DataFrame, Path], Path]:
    """Contract events with ``event_timestamp`` (UTC) written by ``text``."""

    def write(events: pd.DataFrame, folder: Path) -> Path:
        return _csv(name)(events.assign(event_timestamp=text(events["event_timestamp"])), folder)

    return write


def european_events(events: pd.DataFrame, folder: Path) -> Path:
    eu = events.assign(
        event_timestamp=events["event_timestamp"].dt.strftime("%d.%m.%Y %H:%M:%S"),
        unit_price=events["unit_price"].map(lambda p: "" if pd.isna(p) else repr(float(p)).replace(".", ",")),
    )
    return _csv("events_eu.csv", sep=";", encoding="utf-8-sig")(eu, folder)


def events_with_float_ids(events: pd.DataFrame, folder: Path) -> Path:
    return _csv("events_float_ids.csv")(events.assign(user_id=events["user_id"] + ".0"), folder)


def events_mixing_formats(events: pd.DataFrame, folder: Path) -> Path:
    """ISO times, but every tenth row written day-first (two exports pasted together)."""
    text = events["event_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").copy()
    odd = text.index[::10]
    text.loc[odd] = events.loc[odd, "event_timestamp"].dt.strftime("%d/%m/%Y %H:%M")
    return _csv("events_mixed.csv")(events.assign(event_timestamp=text), folder)


def _mixed_formats_message(events: pd.DataFrame) -> str:
    odd = events["event_timestamp"].iloc[::10]
    return (
        f"{{path}}: {len(odd)} rows have a null or unparseable event_timestamp (first: "
        f"{odd.iloc[0].strftime('%d/%m/%Y %H:%M')!r}; the column reads as ISO 8601, detected once from all "
        "its values)"
    )


EVENT_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "iso_with_paris_offsets",
        "ISO strings with +01:00",
        event_times(
            "events_paris.csv", lambda t: t.dt.tz_convert("Europe/Paris").map(lambda x: x.isoformat())
        ),
        Same(),
    ),
    Variant(
        "naive_iso_utc",
        "ISO strings without offset (read as UTC)",
        event_times("events_naive.csv", lambda t: t.dt.strftime("%Y-%m-%d %H:%M:%S")),
        Same(),
    ),
    Variant(
        "month_first_2_digit_year",
        "12/10/09 9:00",
        event_times("events_us.csv", lambda t: t.dt.strftime("%-m/%-d/%y %-H:%M")),
        Same(),
    ),
    Variant(
        "day_first_4_digit_year",
        "10/12/2009 09:00",
        event_times("events_day_first.csv", lambda t: t.dt.strftime("%d/%m/%Y %H:%M")),
        Same(),
    ),
    Variant(
        "excel_serial_dates",
        "Excel serial days",
        event_times(
            "events_serial.csv",
            lambda t: (t.dt.tz_localize(None) - EXCEL_EPOCH) / pd.Timedelta(days=1),
        ),
        Same(),
    ),
    Variant(
        "csv_with_bom", "UTF-8 with a byte-order mark", _csv("events_bom.csv", encoding="utf-8-sig"), Same()
    ),
    Variant("european_csv", "BOM, ';', decimal commas, 10.12.2009 09:00:00", european_events, Same()),
    Variant("ids_as_floats", "user ids written 13085.0", events_with_float_ids, Same()),
    Variant(
        "mixed_date_formats",
        "every tenth row day-first among ISO rows",
        events_mixing_formats,
        Fails(_mixed_formats_message),
    ),
    Variant(
        "header_only",
        "the header and no rows",
        lambda events, folder: _csv("events_header.csv")(events.head(0), folder),
        Fails(lambda events: "{path}: no rows (columns " + ", ".join(events.columns) + ")"),
    ),
    Variant(
        "empty_file",
        "0 bytes",
        empty_file,
        Fails(lambda events: "{path}: empty file (no header, no rows)"),
    ),
)
