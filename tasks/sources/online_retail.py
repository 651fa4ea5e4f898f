"""UCI Online Retail and Online Retail II invoice lines -> purchase events in the data contract.

Reads parquet, csv or xlsx, with either column spelling (``Invoice``/``InvoiceNo``, ``Price``/
``UnitPrice``, ``Customer ID``/``CustomerID``).  Every invoice line the shop really sold to a known
customer becomes one ``purchase`` event; everything else is dropped by the first rule below that matches
it, and counted (:class:`OnlineRetailReport`, also written as JSON beside the landing days):

1. ``overlapping_sheet``: xlsx only: rows of a later sheet whose invoice already appeared in an earlier
   sheet (the two Online Retail II sheets overlap in December 2010).
2. ``repeated_delivery``: a block of consecutive rows of one invoice that repeats an earlier block of
   the same invoice line for line (:func:`repeated_blocks`: the same export appended twice, or two
   exports whose periods overlap, concatenated).  Identical lines inside one block are kept: invoices
   do list the same line twice.
3. ``unparseable_timestamp``: InvoiceDate not readable in the format detected once from the whole
   column (:func:`tasks.sources.timestamps.detect_format`: ISO, Excel serial days, or day-first /
   month-first text with 2- or 4-digit years; never guessed row by row).
4. ``cancellation``: invoices starting with ``C`` (returns; their quantities are negative).
5. ``adjustment_invoice``: invoices starting with ``A`` ("Adjust bad debt").
6. ``missing_customer``: no Customer ID, or a placeholder for "unknown customer" (``0``, ``-1``,
   ``0.0``, blank, ``nan``, ... :func:`tasks.sources.loader.user_ids`): no user to attribute it to.
7. ``non_positive_quantity``: quantity <= 0 on a normal invoice (stock write-offs: "damages", "lost").
8. ``non_product_code``: postage, fees and manual entries, not products (:data:`NON_PRODUCT_CODES`,
   codes starting with ``TEST``, ``ADJUST`` or ``GIFT_`` (vouchers)).
9. ``non_positive_price``: unit price <= 0 (free items, data fixes).
10. ``missing_title``: no Description and no other line of the same StockCode has one.
11. ``outside_window``: the event's UTC day is outside ``[start, end]`` (only when a window is given).

Mapping: ``event_id`` = ``{invoice}-{line:04d}`` (line = 1-based position of the row within its invoice
in file order, counted before any drop, so ids do not depend on the filters), ``session_id`` = invoice
(raw ids, like the Customer ID: landing is owner-only, and ingest replaces all three by keyed pseudonyms),
``user_id`` = Customer ID as a whole number string ("13085"), ``event_timestamp`` = InvoiceDate read as
Europe/London local time converted to UTC, ``quantity``/``unit_price``/``country`` as in the file.
Items: ``item_id`` = StockCode (upper case), ``title`` = its most frequent Description (whitespace
collapsed; ties: alphabetical), ``price`` = median unit price of its kept lines, ``category`` = first
matching keyword rule on the title (:data:`CATEGORY_RULES`; "other" if none: a heuristic, not the
shop's own categories), ``first_seen`` = its first kept purchase in the loaded window.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import pandas as pd

from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, ContractError
from tasks.io import atomic_write_text
from tasks.sources.loader import (
    SourceManifest,
    conform,
    read_csv_export,
    read_errors_as_contract_errors,
    user_ids,
    write_landing,
)
from tasks.sources.timestamps import parse_timestamps

SOURCE: Final = "online_retail"
# The leading underscore keeps parquet dataset readers (pyarrow, pandas, DuckDB hive scans) off it.
REPORT_FILE: Final = "_online_retail_report.json"
LOCAL_TZ: Final = "Europe/London"

_COLUMN_ALIASES: Final = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
_COLUMNS: Final = (
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
)

NON_PRODUCT_CODES: Final = frozenset(
    {"POST", "DOT", "M", "D", "S", "B", "C2", "C3", "CRUK", "PADS", "BANK CHARGES", "AMAZONFEE", "GIFT"}
)
_NON_PRODUCT_PREFIXES: Final = ("TEST", "ADJUST", "GIFT_")

# (category, title keywords separated by "|"); the first rule with a keyword in the title (as whole words)
# wins, so the order matters: "CHRISTMAS CANDLE" is christmas, "LUNCH BAG" is a bag, not kitchen.
_CATEGORY_KEYWORDS: Final = (
    ("christmas", "CHRISTMAS|XMAS|ADVENT|SANTA|REINDEER|SNOWFLAKE|BAUBLE|NATIVITY|PARTY"),
    ("easter", "EASTER|EGG|EGGS|CHICK|CHICKS"),
    (
        "toys and games",
        "TOY|TOYS|GAME|GAMES|PUZZLE|JIGSAW|DOLL|DOLLY|DOMINOES|SKITTLES|PLAYING CARDS|SPACEBOY|BALLOON|"
        "BALLOONS|CRAYONS",
    ),
    (
        "candles and lights",
        "CANDLE|CANDLES|T-LIGHT|T-LIGHTS|TEALIGHT|LANTERN|LIGHT|LIGHTS|LAMP|LAMPSHADE|NIGHTLIGHT|INCENSE",
    ),
    ("bags", "BAG|BAGS|TOTE|SHOPPER|PURSE|HANDBAG|PASSPORT|RUCKSACK|BACKPACK"),
    (
        "kitchen and dining",
        "MUG|MUGS|CUP|CUPS|SAUCER|PLATE|PLATES|BOWL|BOWLS|TEAPOT|TEA|CAKE|CAKES|CAKESTAND|BAKING|CUTLERY|"
        "SPOON|SPOONS|NAPKINS|APRON|LUNCH|BOTTLE|GLASS|JUG|COASTER|COASTERS|KITCHEN|RECIPE|CUPCAKE|BEAKER|"
        "CHOPSTICKS|PANTRY|JAM|STRAWS|TRAY|CAFE|PICNIC|MOULD|DISH|FRIDGE|MAGNETS",
    ),
    (
        "stationery and gift wrap",
        "CARD|CARDS|PAPER|NOTEBOOK|PENCIL|PENCILS|PEN|PENS|STICKER|STICKERS|WRAP|ENVELOPE|ENVELOPES|NOTEPAD|"
        "BOOK|TAPE|STAMP|STAMPS|RIBBON|RIBBONS|TAG|TAGS|CALENDAR|ERASER|RULER|DIARY|JOURNAL|TISSUES",
    ),
    (
        "jewellery and accessories",
        "NECKLACE|BRACELET|EARRINGS|RING|BROOCH|HAIR|HAIRCLIP|CLIP|UMBRELLA|SCARF|CHARM|JEWELLERY|DIAMANTE|"
        "BEADS|WALLET|SUNGLASSES|GLOVES",
    ),
    (
        "garden",
        "GARDEN|PLANT|PLANTER|FLOWER|FLOWERS|WATERING|PARASOL|HAMMOCK|BIRD|BIRDS|HERB|SEED|SEEDS|POT|POTS|"
        "BIRDHOUSE|WINDMILL",
    ),
    (
        "storage",
        "BOX|BOXES|BASKET|BASKETS|TIN|TINS|DRAWER|CHEST|STORAGE|CASE|JAR|JARS|CRATE|HAMPER|TRUNK|BIN|"
        "RACK|HANGER",
    ),
    ("bathroom", "SOAP|BATH|BATHROOM|TOWEL|TOILET|WASHBAG|FLANNEL"),
    (
        "home decor",
        "CUSHION|COVER|DOORMAT|DOOR MAT|MAT|CURTAIN|STOOL|CHAIR|TABLE|TILE|FRAME|CLOCK|SIGN|MIRROR|VASE|"
        "HANGING|HEART|HEARTS|DECORATION|DECORATIONS|WALL|BUNTING|GARLAND|CHALKBOARD|HOOK|HOOKS|DOORSTOP|"
        "ORNAMENT|WREATH|PLAQUE|THROW|BLANKET|QUILT|RUG|MOBILE|CHIME|CHIMES|STAND|SHELF|CABINET|PHOTO|ART|"
        "DOORKNOB|KNOB|LETTERS|BELL|BELLS",
    ),
)
CATEGORY_RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = tuple(
    (name, tuple(keywords.split("|"))) for name, keywords in _CATEGORY_KEYWORDS
)
_CATEGORY_PATTERNS: Final = tuple(
    (name, re.compile(r"(?<![A-Z0-9])(" + "|".join(re.escape(k) for k in keywords) + r")(?![A-Z0-9])"))
    for name, keywords in CATEGORY_RULES
)
OTHER_CATEGORY: Final = "other"

DROP_REASONS: Final = (
    "overlapping_sheet",
    "repeated_delivery",
    "unparseable_timestamp",
    "cancellation",
    "adjustment_invoice",
    "missing_customer",
    "non_positive_quantity",
    "non_product_code",
    "non_positive_price",
    "missing_title",
    "outside_window",
)


@dataclass(frozen=True)
class RowCounts:
    """Rows and distinct customers, stock codes and invoices of a set of invoice lines."""

    rows: int
    customers: int
    stock_codes: int
    invoices: int


@dataclass(frozen=True)
class OnlineRetailReport:
    """What the adapter read, dropped (by the first rule that matched, in :data:`DROP_REASONS` order),
    treated specially and kept.

    ``customer_and_cancellation_filtered`` counts the lines left after dropping cancellations,
    ``A`` adjustments and rows without a customer: the figure the dataset's attribution note quotes
    (the ``A`` invoices have no customer, so the note's two rules leave the same rows).  ``kept`` counts
    what became events.  ``special`` counts lines that were kept but handled with care.
    """

    source_file: str
    rows_read: int
    dropped: Mapping[str, int]
    special: Mapping[str, int]
    customer_and_cancellation_filtered: RowCounts
    kept: RowCounts
    items: int
    items_by_category: Mapping[str, int]
    days: int
    first_day: dt.date | None
    last_day: dt.date | None
    window: tuple[dt.date | None, dt.date | None] = (None, None)
    report_path: str = field(default="")

    def to_json(self) -> str:
        def default(value: object) -> str:
            if isinstance(value, dt.date):
                return value.isoformat()
            raise TypeError(type(value).__name__)

        return json.dumps(asdict(self), indent=2, sort_keys=True, default=default)


def category_of(title: str) -> str:
    """The category of a product title: the first :data:`CATEGORY_RULES` rule with a keyword in it."""
    upper = title.upper()
    for name, pattern in _CATEGORY_PATTERNS:
        if pattern.search(upper):
            return name
    return OTHER_CATEGORY


def is_non_product(code: str) -> bool:
    """Stock codes that are postage, fees, vouchers, tests or manual adjustments rather than products."""
    upper = code.strip().upper()
    return upper in NON_PRODUCT_CODES or upper.startswith(_NON_PRODUCT_PREFIXES)


def _read(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The file's rows with canonical column names, and a mask of rows repeated from an earlier sheet."""
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".csv", ".xlsx", ".xls"}:
        raise ContractError(f"{path}: Online Retail files are read from .parquet, .csv or .xlsx")
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ContractError(f"{path}: empty file (0 bytes)")
    with read_errors_as_contract_errors(path):
        if suffix == ".parquet":
            frames = [pd.read_parquet(path)]
        elif suffix == ".csv":
            try:
                frames = [read_csv_export(path)]
            except UnicodeDecodeError:  # the original UCI CSV exports are Latin-1
                frames = [read_csv_export(path, encoding="latin-1")]
        else:
            frames = list(
                pd.read_excel(path, sheet_name=None, dtype={"Invoice": str, "InvoiceNo": str}).values()
            )
    renamed = []
    for frame in frames:
        frame = frame.rename(columns=lambda c: _COLUMN_ALIASES.get(str(c).strip(), str(c).strip()))
        missing = [c for c in _COLUMNS if c not in frame.columns]
        if missing:
            raise ContractError(f"{path}: not an Online Retail file, missing columns: {', '.join(missing)}")
        frame = frame[list(_COLUMNS)].copy()
        frame["Invoice"] = frame["Invoice"].astype(str).str.strip()
        renamed.append(frame)
    overlap = []
    seen: set[str] = set()
    for frame in renamed:
        overlap.append(frame["Invoice"].isin(seen))
        seen.update(frame["Invoice"].unique())
    return pd.concat(renamed, ignore_index=True), pd.concat(overlap, ignore_index=True)


def repeated_blocks(frame: pd.DataFrame) -> pd.Series:
    """Rows of a block (consecutive rows of one invoice) that repeat an earlier block of the same
    invoice line for line: a second delivery of rows already read.

    Only invoices that occur in more than one block are compared; the first block of each content is
    kept, so the kept lines keep their line numbers (and event ids) of a single delivery.
    """
    invoice = frame["Invoice"].reset_index(drop=True)
    block = (invoice != invoice.shift()).cumsum()
    split = (block.groupby(invoice).transform("nunique") > 1).to_numpy()
    if not split.any():
        return pd.Series(False, index=frame.index)
    rows = pd.util.hash_pandas_object(frame.loc[split, list(_COLUMNS)], index=False).to_numpy()
    blocks = block[split].to_numpy()
    signature = pd.Series(rows).groupby(blocks).agg(tuple)
    owner = pd.Series(invoice[split].to_numpy()).groupby(blocks).first()
    again = pd.DataFrame({"invoice": owner, "rows": signature}).duplicated()
    return pd.Series(block.isin(again.index[again.to_numpy()]).to_numpy(), index=frame.index)


def _counts(frame: pd.DataFrame) -> RowCounts:
    return RowCounts(
        rows=len(frame),
        customers=int(frame["user_id"].nunique()),
        stock_codes=int(frame["StockCode"].nunique()),
        invoices=int(frame["Invoice"].nunique()),
    )


def _titles(frame: pd.DataFrame) -> pd.Series:
    """Most frequent description per stock code (ties: alphabetically first)."""
    described = frame.dropna(subset=["title_raw"])
    counts = described.groupby(["StockCode", "title_raw"]).size().rename("n").reset_index()
    counts = counts.sort_values(["StockCode", "n", "title_raw"], ascending=[True, False, True])
    return counts.drop_duplicates("StockCode").set_index("StockCode")["title_raw"]


class TooLittleKept(ContractError):
    """A source file of which (almost) no row would become an event; the message holds the drop table."""


def _refuse_if_too_little_kept(path: Path, reason: pd.Series, min_kept_share: float) -> None:
    """Raise :class:`TooLittleKept` when no row, or less than ``min_kept_share`` of the rows inside the
    window (``outside_window`` drops are the caller's choice, not the file's fault), would be kept."""
    counts = reason.value_counts()
    considered = len(reason) - int(counts.get("outside_window", 0))
    kept = int(reason.isna().sum())
    share = kept / considered if considered else 0.0
    if kept and share >= min_kept_share:
        return
    table = "\n".join(
        f"  {name:<24} {int(counts.get(name, 0)):>10,}" for name in DROP_REASONS if counts.get(name, 0)
    )
    raise TooLittleKept(
        f"{path}: kept {kept:,} of {considered:,} rows ({share:.1%}; SHOPREC_MIN_KEPT_ROW_SHARE is "
        f"{min_kept_share:.0%}), so nothing was written. Dropped rows by reason:\n{table}"
        if considered
        else f"{path}: no rows"
    )


def load_online_retail(
    path: Path,
    landing_dir: Path,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    min_kept_share: float = 0.0,
) -> tuple[SourceManifest, OnlineRetailReport]:
    """Convert an Online Retail (II) file into purchase events, one landing folder per UTC day.

    ``start``/``end`` (inclusive UTC days) limit which days are written; every other rule is applied to
    the whole file first, so titles, prices and the report's drop counts do not depend on the window.
    The report is written to ``landing_dir/_online_retail_report.json`` (temp file, then renamed; 0600).
    A file of which nothing, or less than ``min_kept_share`` of the rows inside the window, would be
    kept is refused before anything is written (:class:`TooLittleKept`, with the drop table).
    """
    path = Path(path)
    raw, overlapping = _read(path)
    frame = raw.copy()
    frame["line"] = frame.groupby("Invoice", sort=False).cumcount() + 1
    frame["StockCode"] = frame["StockCode"].astype("string").str.strip().str.upper()
    frame["title_raw"] = (
        frame["Description"].astype("string").str.strip().str.replace(r"\s+", " ", regex=True)
    )
    frame.loc[frame["title_raw"] == "", "title_raw"] = pd.NA
    frame["Quantity"] = pd.to_numeric(frame["Quantity"], errors="coerce")
    frame["Price"] = pd.to_numeric(frame["Price"], errors="coerce")
    frame["user_id"] = user_ids(frame["Customer ID"])
    times = parse_timestamps(frame["InvoiceDate"], column="InvoiceDate", where=str(path), naive_tz=LOCAL_TZ)
    utc = times.utc.set_axis(frame.index)

    reason = pd.Series(pd.NA, index=frame.index, dtype="string")

    def drop(mask: pd.Series, name: str) -> None:
        reason[mask.fillna(False).astype(bool) & reason.isna()] = name

    invoice = frame["Invoice"]
    drop(overlapping, "overlapping_sheet")
    drop(repeated_blocks(raw), "repeated_delivery")
    drop(utc.isna(), "unparseable_timestamp")
    drop(invoice.str.upper().str.startswith("C"), "cancellation")
    drop(invoice.str.upper().str.startswith("A"), "adjustment_invoice")
    drop(frame["user_id"].isna(), "missing_customer")
    filtered = _counts(frame[reason.isna()])
    drop(~(frame["Quantity"] > 0), "non_positive_quantity")
    drop(frame["StockCode"].fillna("").map(is_non_product), "non_product_code")
    drop(~(frame["Price"] > 0), "non_positive_price")
    titles = _titles(frame[reason.isna()])
    drop(~frame["StockCode"].isin(titles.index), "missing_title")

    utc_day = utc.dt.date
    in_window = pd.Series(True, index=frame.index)
    if start is not None:
        in_window &= utc_day >= start
    if end is not None:
        in_window &= utc_day <= end
    drop(reason.isna() & ~in_window, "outside_window")

    _refuse_if_too_little_kept(path, reason, min_kept_share)
    kept = frame[reason.isna()].copy()
    kept_utc = utc[reason.isna()]
    duplicated = kept.duplicated(subset=list(_COLUMNS), keep="first")
    special = {
        "description_from_other_lines": int(kept["title_raw"].isna().sum()),
        "stock_codes_with_several_descriptions": int(
            frame[reason.isna() | (reason == "outside_window")]
            .groupby("StockCode")["title_raw"]
            .nunique()
            .gt(1)
            .sum()
        ),
        "repeated_identical_lines_kept": int(duplicated.sum()),
        "ambiguous_local_times_read_as_gmt": int(times.ambiguous.to_numpy()[reason.isna().to_numpy()].sum()),
        "nonexistent_local_times_shifted": int(times.nonexistent.to_numpy()[reason.isna().to_numpy()].sum()),
    }

    events = pd.DataFrame(
        {
            "event_id": kept["Invoice"] + "-" + kept["line"].map("{:04d}".format),
            "user_id": kept["user_id"],
            "item_id": kept["StockCode"],
            "event_type": "purchase",
            "event_timestamp": kept_utc,
            "quantity": kept["Quantity"],
            "unit_price": kept["Price"],
            "session_id": kept["Invoice"],
            "country": kept["Country"],
        }
    )
    priced = frame[reason.isna() | (reason == "outside_window")]
    prices = priced.groupby("StockCode")["Price"].median()
    first_seen = events.groupby("item_id")["event_timestamp"].min()
    items = pd.DataFrame({"item_id": first_seen.index, "first_seen": first_seen.to_numpy()})
    items["title"] = items["item_id"].map(titles)
    items["category"] = items["title"].map(category_of)
    items["price"] = items["item_id"].map(prices).round(4)

    manifest = write_landing(
        SOURCE,
        landing_dir,
        conform(events, EVENTS_SCHEMA, f"{path} (events)"),
        conform(items, ITEMS_SCHEMA, f"{path} (items)"),
    )
    counts = reason.value_counts()
    report_path = Path(landing_dir) / REPORT_FILE
    report = OnlineRetailReport(
        source_file=str(path),
        rows_read=len(frame),
        dropped={name: int(counts.get(name, 0)) for name in DROP_REASONS},
        special=special,
        customer_and_cancellation_filtered=filtered,
        kept=_counts(kept),
        items=len(items),
        items_by_category={k: int(v) for k, v in items["category"].value_counts().sort_index().items()},
        days=len(manifest.days),
        first_day=manifest.days[0] if manifest.days else None,
        last_day=manifest.days[-1] if manifest.days else None,
        window=(start, end),
        report_path=str(report_path),
    )
    atomic_write_text(report_path, report.to_json() + "\n", private=True)  # beside raw data: owner-only
    return manifest, report
