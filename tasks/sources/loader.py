"""Files already in the data contract -> landing day folders, and the writer every source shares.

:func:`load_contract_files` reads CSV or Parquet files whose columns are the contract's ``events`` or
``items`` columns, checks the columns with :mod:`tasks.contracts`, converts every value to the contract's
types and writes one ``landing/date=YYYY-MM-DD/`` folder per UTC day (events by ``event_timestamp``,
catalog rows by ``first_seen``).

Landing is the raw zone: a null in a required column is passed through (the ingest gate quarantines the
row with its reason) and only what makes a row impossible to place or type is refused with a
:class:`~tasks.contracts.ContractError`: a missing, unexpected or personal-data column, a timestamp
that is null or unparseable, a number that is not a number.

:func:`write_landing_day` replaces one day's folder as a whole: the files are written into a temporary
folder beside it, which is renamed into place, so a reader sees the old day or the new day, never half of
one, and writing the same day twice leaves the same bytes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.contracts import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    ContractError,
    check_columns,
    partition_dir,
    require_columns,
)
from tasks.io import replace_dir
from tasks.sources.timestamps import describe, parse_timestamps


@dataclass(frozen=True)
class SourceManifest:
    """What a source wrote below ``landing_dir``: the days (one ``date=YYYY-MM-DD`` folder each) and counts.

    ``n_items`` counts catalog rows written (items land on the day they are first seen); ``n_users``
    counts distinct raw user ids in the events written.
    """

    source: str
    days: tuple[dt.date, ...]
    n_events: int
    n_items: int
    n_users: int
    landing_dir: str


EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"

_TIMESTAMP_COLUMNS = {"event_timestamp", "first_seen"}


def _relaxed(schema: pa.Schema) -> pa.Schema:
    """The same columns and types with every field nullable (landing may hold rows the gate rejects)."""
    return pa.schema([field.with_nullable(True) for field in schema])


def _to_utc(values: pd.Series, column: str, where: str) -> pd.Series:
    """Timestamps as UTC ``datetime64[us, UTC]`` in the one format detected from the whole column
    (:func:`~tasks.sources.timestamps.parse_timestamps`); values without an offset are read as UTC.
    Refuses a null value, or one the column's format cannot read (a column that mixes formats)."""
    parsed = parse_timestamps(values, column=column, where=where, naive_tz="UTC")
    bad = parsed.utc.isna()
    if bad.any():
        first = values.reset_index(drop=True)[bad].iloc[0]
        raise ContractError(
            f"{where}: {int(bad.sum())} rows have a null or unparseable {column} (first: {first!r}; "
            f"the column reads as {describe(parsed.fmt)}, detected once from all its values)"
        )
    return parsed.utc


def _to_string(values: pd.Series) -> pd.Series:
    """Strings, nulls and blanks as null; integral numbers (``13085.0``) are written without ``.0``."""
    values = _blank_to_null(values)
    if pd.api.types.is_float_dtype(values.dtype):
        whole = values.dropna()
        if (whole == whole.round()).all():
            values = values.astype("Int64")
    return values.astype("string").astype(object).where(values.notna(), None)


_FLOAT_WRITTEN_ID: Final = re.compile(r"^([+-]?\d+)\.0*$")
# What exports write for "unknown customer": read as a missing id, never as one (very busy) customer.
PLACEHOLDER_USER_IDS: Final = frozenset({"", "0", "-1", "nan", "none", "null", "n/a", "na"})


def user_ids(values: pd.Series) -> pd.Series:
    """User ids as text, the same customer written alike, placeholders as missing (``None``).

    Whitespace is stripped; ids written as floats (``17850.0``, as pandas writes an id column with
    gaps, or a float column) become ``17850``, so one customer gets one pseudonym however the export
    wrote the id; other ids are kept as written (leading zeros too).  :data:`PLACEHOLDER_USER_IDS`
    (any case; ``0.0`` and ``-1.0`` too) and ids of zeros only (``000``) are missing customers.
    """

    def one(value: object) -> str | None:
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            return None
        text = _FLOAT_WRITTEN_ID.sub(r"\1", str(value).strip())
        placeholder = text.lower() in PLACEHOLDER_USER_IDS or text.strip("0") in {"", "-", "+"}
        return None if placeholder else text

    mapping = {value: one(value) for value in pd.unique(values.astype(object))}
    # NaN is not equal to itself, so it misses the mapping: None, as it should be
    return pd.Series([mapping.get(v) for v in values.astype(object)], index=values.index, dtype=object)


def _blank_to_null(values: pd.Series) -> pd.Series:
    """Empty or whitespace-only strings mean "missing", as an empty CSV cell does."""
    if values.dtype != object and not pd.api.types.is_string_dtype(values.dtype):
        return values
    blank = values.map(lambda v: isinstance(v, str) and not v.strip())
    return values.mask(blank.astype(bool), None)


def _to_number(values: pd.Series, column: str, where: str, dtype: str) -> pd.Series:
    values = _blank_to_null(values)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise ContractError(
            f"{where}: column {column} has non-numeric values (first: {values[bad].iloc[0]!r})"
        )
    if dtype == "Int64":
        fractional = numbers.notna() & (numbers != numbers.round())
        if fractional.any():
            raise ContractError(
                f"{where}: column {column} must hold whole numbers (first: {values[fractional].iloc[0]!r})"
            )
    return numbers.astype(dtype)


def conform(frame: pd.DataFrame, schema: pa.Schema, where: str) -> pa.Table:
    """A frame with the contract's columns (in any order) as a table of exactly the contract's types.

    The schema is the contract's own when the required columns have no nulls, else the same schema with
    every field nullable, so that the ingest gate can quarantine those rows rather than lose them.
    """
    require_columns(list(frame.columns), schema, where)
    unexpected = check_columns(list(frame.columns), schema).unexpected
    if unexpected:
        raise ContractError(f"{where}: unexpected columns (not in the contract): {', '.join(unexpected)}")
    columns: dict[str, pd.Series] = {}
    for field in schema:
        values = frame[field.name].reset_index(drop=True)
        if field.name in _TIMESTAMP_COLUMNS:
            columns[field.name] = _to_utc(values, field.name, where)
        elif pa.types.is_integer(field.type):
            columns[field.name] = _to_number(values, field.name, where, "Int64")
        elif pa.types.is_floating(field.type):
            columns[field.name] = _to_number(values, field.name, where, "Float64")
        elif field.name == "user_id":
            columns[field.name] = user_ids(values)
        else:
            columns[field.name] = _to_string(values)
    conformed = pd.DataFrame(columns)
    required = [f.name for f in schema if not f.nullable]
    target = _relaxed(schema) if conformed[required].isna().any().any() else schema
    table = pa.Table.from_pandas(conformed, schema=target, preserve_index=False)
    return table.replace_schema_metadata(None)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table().replace_schema_metadata(None)


def write_landing_day(
    landing_dir: Path, day: dt.date, events: pa.Table, items: pa.Table | None = None
) -> Path:
    """Replace ``landing_dir/date=DAY/`` with ``events.parquet`` (and ``items.parquet`` if any rows).

    Written to a temporary sibling folder first, then renamed into place; an existing folder for the day
    is moved aside and removed only after the new one is in place.  Landing holds raw ids: the folders
    are 0700 and the files 0600 whatever the process's umask.
    """

    def write(staging: Path) -> None:
        pq.write_table(events, staging / EVENTS_FILE)
        if items is not None and items.num_rows:
            pq.write_table(items, staging / ITEMS_FILE)

    return replace_dir(partition_dir(landing_dir, day), write, private=True)


def write_landing(
    source: str, landing_dir: Path, events: pa.Table, items: pa.Table | None = None
) -> SourceManifest:
    """Split contract tables by UTC day (events by ``event_timestamp``, items by ``first_seen``) and write.

    Events of a day are sorted by (event_timestamp, event_id), catalog rows by (first_seen, item_id), so
    the bytes depend on the rows only, not on their input order.
    """
    items = items if items is not None else empty_table(ITEMS_SCHEMA)
    event_days = _utc_days(events, "event_timestamp")
    item_days = _utc_days(items, "first_seen")
    days = sorted(set(event_days.tolist()) | set(item_days.tolist()))
    for day in days:
        day_events = _sorted(events.filter(pa.array(event_days == day)), ["event_timestamp", "event_id"])
        day_items = _sorted(items.filter(pa.array(item_days == day)), ["first_seen", "item_id"])
        write_landing_day(landing_dir, day, day_events, day_items)
    users = pc.count_distinct(events.column("user_id")).as_py() if events.num_rows else 0
    return SourceManifest(
        source=source,
        days=tuple(days),
        n_events=events.num_rows,
        n_items=items.num_rows,
        n_users=int(users),
        landing_dir=str(landing_dir),
    )


def _utc_days(table: pa.Table, column: str) -> pd.Series:
    if table.num_rows == 0:
        return pd.Series([], dtype=object)
    stamps = table.column(column).to_pandas()
    return stamps.dt.tz_convert("UTC").dt.date


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    if table.num_rows == 0:
        return table
    return table.sort_by([(key, "ascending") for key in keys])


_EUROPEAN_NUMBER: Final = re.compile(r"^\s*-?\d{1,3}(\.\d{3})*(,\d+)?\s*$|^\s*-?\d+(,\d+)?\s*$")


def read_csv_export(path: Path, encoding: str = "utf-8-sig") -> pd.DataFrame:
    """A CSV as shops export it, every value as text: with or without a byte-order mark, ``,`` or
    ``;`` as separator (the one the header uses more).  A ``;`` file is a European export: numbers
    written ``1.234,5`` are read as ``1234.5`` (other values are left as written)."""
    with path.open(encoding=encoding, errors="replace") as handle:
        header = handle.readline()
    separator = ";" if header.count(";") > header.count(",") else ","
    frame = pd.read_csv(path, dtype=str, keep_default_na=True, sep=separator, encoding=encoding)
    if separator == ";":
        for column in frame.columns:
            values = frame[column]
            european = values.notna() & values.astype(str).str.contains(",", regex=False)
            european &= values.astype(str).str.match(_EUROPEAN_NUMBER)
            frame.loc[european, column] = (
                values[european].str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
            )
    return frame


@contextmanager
def read_errors_as_contract_errors(path: Path) -> Generator[None]:
    """Turn a reader's failure on ``path`` into one :class:`ContractError` line naming the file."""
    try:
        yield
    except pd.errors.EmptyDataError as exc:
        raise ContractError(f"{path}: empty file (no header, no rows)") from exc
    except (ValueError, OSError, pd.errors.ParserError, pa.ArrowException) as exc:
        suffix = path.suffix.lower().lstrip(".")
        raise ContractError(f"{path}: unreadable as {suffix} ({type(exc).__name__}: {exc})") from exc


def _read(path: Path) -> pd.DataFrame:
    """The rows of one contract file; a missing, empty, unreadable or header-only file is refused."""
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet"}:
        raise ContractError(f"{path}: only .csv and .parquet files are read (got {suffix or 'no suffix'})")
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    with read_errors_as_contract_errors(path):
        frame = pq.read_table(path).to_pandas() if suffix == ".parquet" else read_csv_export(path)
    if frame.empty:
        raise ContractError(f"{path}: no rows (columns {', '.join(map(str, frame.columns))})")
    return frame


def _table_of(columns: list[str], path: Path) -> pa.Schema:
    """Which contract table a file holds, decided by its columns (``event_id`` -> events, else items)."""
    if "event_id" in columns or "event_timestamp" in columns:
        return EVENTS_SCHEMA
    if "first_seen" in columns or "title" in columns:
        return ITEMS_SCHEMA
    raise ContractError(f"{path}: columns match neither events nor items: {', '.join(columns)}")


def _refuse_if_few_users(events: pa.Table, path: Path, min_kept_share: float) -> None:
    """Refuse an events file in which no event, or less than ``min_kept_share`` of them, has a user id
    (after placeholders such as ``0`` became missing): the gate would quarantine (almost) every row."""
    with_user = events.num_rows - events.column("user_id").null_count
    share = with_user / events.num_rows
    if with_user and share >= min_kept_share:
        return
    raise ContractError(
        f"{path}: {with_user:,} of {events.num_rows:,} events have a user id ({share:.1%}; "
        f"SHOPREC_MIN_KEPT_ROW_SHARE is {min_kept_share:.0%}); the others are missing or placeholders "
        "(0, -1, blank, nan, ...), so nothing was written"
    )


def load_contract_files(
    paths: Sequence[Path], landing_dir: Path, *, min_kept_share: float = 0.0
) -> SourceManifest:
    """Read contract CSV/Parquet files (events or items, told apart by their columns) into landing days.

    All files are read and checked before anything is written: one bad file refuses the whole batch.
    Days that receive rows are replaced as a whole; other days in ``landing_dir`` are left untouched.
    An events file in which no event, or less than ``min_kept_share`` of them, has a user id is refused.
    """
    if not paths:
        raise ContractError("load_contract_files: no files given")
    events: list[pa.Table] = []
    items: list[pa.Table] = []
    for path in paths:
        frame = _read(Path(path))
        schema = _table_of(list(frame.columns), Path(path))
        table = conform(frame, schema, str(path))
        if schema is EVENTS_SCHEMA:
            _refuse_if_few_users(table, Path(path), min_kept_share)
        (events if schema is EVENTS_SCHEMA else items).append(table)
    return write_landing(
        "contract_files",
        landing_dir,
        _concat(events, EVENTS_SCHEMA),
        _concat(items, ITEMS_SCHEMA),
    )


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not tables:
        return empty_table(schema)
    if all(t.schema.equals(schema) for t in tables):
        return pa.concat_tables(tables)
    relaxed = _relaxed(schema)
    return pa.concat_tables([t.cast(relaxed) for t in tables])
