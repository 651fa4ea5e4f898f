"""The data contract: canonical tables and the landing layout (see docs/data-contract.md).

``events``: one row per user interaction.  ``items``: the product catalog.  Landing batches live in one
folder per day, ``landing/date=YYYY-MM-DD/``, holding ``events*.parquet|csv`` and optionally
``items*.parquet|csv`` (catalog rows first seen or changed that day).  Raw user ids exist only there.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa

PURCHASE: Final = "purchase"
EVENT_TYPES: Final[tuple[str, ...]] = ("view", "click", "add_to_cart", PURCHASE)

TIMESTAMP_TYPE: Final = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("quantity", pa.int64(), nullable=False),
        pa.field("unit_price", pa.float64(), nullable=True),
        pa.field("session_id", pa.string(), nullable=True),
        pa.field("country", pa.string(), nullable=True),
    ]
)

ITEMS_SCHEMA: Final = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=True),
        pa.field("price", pa.float64(), nullable=True),
        pa.field("first_seen", TIMESTAMP_TYPE, nullable=False),
    ]
)

EVENT_COLUMNS: Final[tuple[str, ...]] = tuple(EVENTS_SCHEMA.names)
ITEM_COLUMNS: Final[tuple[str, ...]] = tuple(ITEMS_SCHEMA.names)

# Column names that look like direct personal data are refused by the contract.
_PII_PATTERN: Final = re.compile(
    r"(e[-_ ]?mail|(^|_)(first|last|full|customer|user)?_?name$|phone|mobile|address|street|"
    r"postcode|zip_?code|birth|ssn|passport|iban|card_?number)",
    re.IGNORECASE,
)

_PARTITION_PATTERN: Final = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


class ExpectedError(Exception):
    """An error a person fixes from its message alone: a bad or missing file, a bad option value.

    The message names the file (or option) and the problem.  The ``shoprec`` CLI prints it on stderr
    without a traceback and exits with :attr:`exit_code` (``--verbose`` or ``SHOPREC_VERBOSE=1``
    shows the traceback).  Anything else that escapes is a bug and keeps its traceback.
    """

    exit_code: int = 1


class OptionError(ExpectedError, ValueError):
    """A command-line option whose value cannot be used (exit code 2, as for other usage errors)."""

    exit_code = 2


class ContractError(ExpectedError, ValueError):
    """Input that does not satisfy the data contract. The message says what and where."""


def parse_day(value: str, option: str) -> dt.date:
    """``YYYY-MM-DD`` given for ``option``, or an :class:`OptionError` naming the option and the value."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise OptionError(f"{option} {value!r} is not a day (YYYY-MM-DD): {exc}") from exc


def parse_moment(value: str, option: str) -> dt.datetime:
    """An ISO 8601 time given for ``option`` (naive = UTC), or an :class:`OptionError`."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise OptionError(
            f"{option} {value!r} is not an ISO 8601 time (e.g. 2010-12-10 or 2010-12-10T12:00:00+00:00): {exc}"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class ColumnReport:
    """How a frame's columns compare with a contract."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    personal_data: tuple[str, ...]


def personal_data_columns(columns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Columns whose names look like direct personal data (e-mail, name, phone, address, ...)."""
    return tuple(c for c in columns if _PII_PATTERN.search(c))


def check_columns(columns: list[str] | tuple[str, ...], schema: pa.Schema) -> ColumnReport:
    """Compare column names with a contract schema."""
    names = set(schema.names)
    return ColumnReport(
        missing=tuple(n for n in schema.names if n not in columns),
        unexpected=tuple(c for c in columns if c not in names),
        # a contract's own columns were reviewed (exposures' policy_name is no person's name)
        personal_data=personal_data_columns([c for c in columns if c not in names]),
    )


def require_columns(columns: list[str] | tuple[str, ...], schema: pa.Schema, where: str) -> None:
    """Raise :class:`ContractError` if columns are missing or look like personal data."""
    report = check_columns(columns, schema)
    problems = []
    if report.personal_data:
        problems.append(f"personal-data columns are refused: {', '.join(report.personal_data)}")
    if report.missing:
        problems.append(f"missing columns: {', '.join(report.missing)}")
    if problems:
        raise ContractError(f"{where}: " + "; ".join(problems))


def partition_name(day: dt.date) -> str:
    """Folder name of one day's partition: ``date=YYYY-MM-DD``."""
    return f"date={day.isoformat()}"


def partition_dir(root: Path, day: dt.date) -> Path:
    return root / partition_name(day)


def parse_partition(name: str) -> dt.date | None:
    """The day of a ``date=YYYY-MM-DD`` folder name, or None for anything else."""
    match = _PARTITION_PATTERN.match(name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def list_partitions(root: Path) -> list[dt.date]:
    """Sorted days that have a partition folder below ``root``."""
    if not root.is_dir():
        return []
    days = (parse_partition(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(d for d in days if d is not None)


def days_in_interval(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """Calendar days (UTC) whose start lies in ``[start, end)``; a daily interval gives one day."""
    start_utc = start.astimezone(dt.UTC)
    end_utc = end.astimezone(dt.UTC)
    day = start_utc.date()
    if dt.datetime.combine(day, dt.time(), dt.UTC) < start_utc:
        day += dt.timedelta(days=1)
    days = []
    while dt.datetime.combine(day, dt.time(), dt.UTC) < end_utc:
        days.append(day)
        day += dt.timedelta(days=1)
    return days


def format_day_ranges(days: Iterable[dt.date]) -> str:
    """Days as comma-separated runs of consecutive days, ``2025-06-01..2025-06-09,2025-06-11``:
    exact (a gap shows) and short whatever the window's length (an MLflow tag value)."""
    ordered = sorted(set(days))
    runs: list[list[dt.date]] = []
    for day in ordered:
        if runs and day - runs[-1][-1] == dt.timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        run[0].isoformat() if len(run) == 1 else f"{run[0].isoformat()}..{run[-1].isoformat()}"
        for run in runs
    )


def parse_day_ranges(text: str) -> list[dt.date]:
    """The days of :func:`format_day_ranges`'s text, sorted. Raises ValueError on anything else."""
    days: list[dt.date] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("..")
        start = dt.date.fromisoformat(first)
        end = dt.date.fromisoformat(last) if last else start
        if end < start:
            raise ValueError(f"day range {part!r} ends before it starts")
        days.extend(start + dt.timedelta(days=k) for k in range((end - start).days + 1))
    return sorted(set(days))


def landing_files(day_dir: Path, table: str) -> list[Path]:
    """Files of one table (``events`` or ``items``) in a landing day folder, sorted by name."""
    files = [
        p
        for p in day_dir.iterdir()
        if p.is_file() and p.name.startswith(table) and p.suffix.lower() in {".parquet", ".csv"}
    ]
    return sorted(files)
