"""Ingest one landing day: read, pseudonymise, validate with Great Expectations, split lake / quarantine.

Entry points the ``ingest_events`` DAG calls:

* :func:`update_catalog` merges the landing ``items*`` files of every day up to and including ``day``
  into ``lake/items/items.parquet`` (first_seen = earliest; other attributes from the latest day),
  after the ``items`` suite passed.
* :func:`ingest_day` reads ``landing/date=D/events*``, replaces user ids and the source ids that link
  back to raw records (``event_id``, ``session_id``: invoice numbers) by keyed pseudonyms before
  anything is written, runs the ``events`` suite and writes the good rows to
  ``lake/events/date=D/part-0.parquet`` and the failing rows, each with the names of the expectations
  it failed, to ``quarantine/date=D/rows.parquet``.  If the bad-row share exceeds
  ``settings.max_bad_row_share`` or a table-level expectation fails, :class:`IngestRejected` is raised
  and nothing of that day reaches the lake (the quarantine partition still records why).

Partitions are written to a temporary folder and renamed into place, sorted deterministically, so a
re-run replaces the day and identical input (and key) gives byte-identical files.  Raw user, event and
session ids stay in landing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Settings
from tasks.contracts import (
    EVENT_COLUMNS,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    ITEM_COLUMNS,
    ITEMS_SCHEMA,
    ContractError,
    check_columns,
    landing_files,
    list_partitions,
    partition_dir,
    require_columns,
)
from tasks.io import atomic_write_bytes, atomic_write_json, replace_dir
from tasks.io import run_days as io_run_days
from tasks.pseudonymize import (
    SOURCE_ID_PREFIXES,
    load_key,
    pseudonymize,
    pseudonymize_source_id,
    record_key_fingerprint,
)
from tasks.sources.timestamps import parse_timestamps
from tasks.validation import GateResult, build_data_docs, run_gate, suite_fingerprint

log = logging.getLogger(__name__)

LAKE_FILE: Final = "part-0.parquet"
QUARANTINE_FILE: Final = "rows.parquet"
REPORT_FILE: Final = "report.json"
CATALOG_FILE: Final = "items.parquet"
# Which catalog bytes passed which items suite (see update_catalog); beside the catalog, never read as data.
CATALOG_STATE_FILE: Final = "_validated.json"
RESULT_FILE: Final = "result.json"  # a stored GX validation result (reports/validations/SUITE/date=D/)
# A day is held in memory while it is validated; larger single files must be split upstream.
MAX_LANDING_FILE_BYTES: Final = 512 * 1024 * 1024
DOMINANT_USER: Final = "user_share_within_limit"  # meta.name of the dominant-user expectation

_SOURCE_FILE: Final = "_source_file"
_SOURCE_ROW: Final = "_source_row"
# the names of these columns for other readers of read_landing_table
SOURCE_FILE: Final = _SOURCE_FILE
SOURCE_ROW: Final = _SOURCE_ROW
_PARSE_FAILURES: Final = "_parse_failures"


class IngestError(ContractError):
    """A landing day that cannot be read as the contract says (missing, empty, unreadable, wrong)."""


class UnreadableBatch(IngestError):
    """A landing batch that is there but cannot be read; the day was quarantined whole (report only)."""


class IngestRejected(RuntimeError):
    """A day that was read but failed the gate; the message names expectations and counts."""


@dataclass(frozen=True)
class IngestManifest:
    """What :func:`ingest_day` did for one day (small: goes through XCom)."""

    day: str
    run_id: str
    rows_in: int
    rows_clean: int
    rows_quarantined: int
    lake_uri: str
    quarantine_uri: str
    validation_result_uri: str
    volume_check: str


@dataclass(frozen=True)
class CatalogManifest:
    """What :func:`update_catalog` did (small: goes through XCom)."""

    day: str
    items: int
    items_new_today: int
    catalog_uri: str
    # "validated": the items suite passed this catalog; "unchanged": byte-identical to the catalog that
    # last passed the same suite version, so the suite was not run again (see update_catalog)
    validation: str
    validation_result_uri: str


# --- reading landing files ------------------------------------------------------------------------


def _fix_encoding(value: object) -> object:
    """Undo ``surrogateescape``: UTF-8 if the bytes are UTF-8, else Windows-1252 (mixed-encoding CSVs)."""
    if not isinstance(value, str):
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _read_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8",
        encoding_errors="surrogateescape",
    )
    return frame.map(_fix_encoding)


def _read_file(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """One landing file as a frame of contract columns; refuses what the contract refuses."""
    size = path.stat().st_size
    if size == 0:
        raise IngestError(f"{path}: empty file (0 bytes)")
    if size > MAX_LANDING_FILE_BYTES:
        raise IngestError(
            f"{path}: {size} bytes, above the {MAX_LANDING_FILE_BYTES}-byte limit for one landing "
            "file; split it into several files of the same day"
        )
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
            columns = table.column_names
        else:
            frame = _read_csv(path)
            columns = list(frame.columns)
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError) as exc:
        raise IngestError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    require_columns(columns, schema, where=str(path))
    unexpected = check_columns(columns, schema).unexpected
    if unexpected:
        raise IngestError(f"{path}: columns not in the contract: {', '.join(unexpected)}")
    if path.suffix.lower() == ".parquet":
        frame = _parquet_to_frame(path, table, schema)
    if frame.empty:
        raise IngestError(f"{path}: no rows")
    return frame[list(schema.names)]


def _parquet_to_frame(path: Path, table: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    arrays = {}
    for contract_field in schema:
        column = table.column(contract_field.name)
        target = contract_field.type
        if pa.types.is_timestamp(target) and pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = column.cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))  # naive = UTC
        elif pa.types.is_null(column.type):
            column = pa.nulls(len(column), type=target)
        if not column.type.equals(target):
            compatible = (
                (pa.types.is_integer(target) and pa.types.is_integer(column.type))
                or (
                    pa.types.is_floating(target)
                    and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type))
                )
                or (pa.types.is_string(target) and pa.types.is_large_string(column.type))
                or (pa.types.is_timestamp(target) and pa.types.is_timestamp(column.type))
            )
            if not compatible:
                raise IngestError(
                    f"{path}: column {contract_field.name!r} has type {column.type}, "
                    f"the contract says {target}"
                )
            try:
                column = column.cast(target)
            except pa.ArrowInvalid as exc:
                raise IngestError(f"{path}: column {contract_field.name!r}: {exc}") from exc
        arrays[contract_field.name] = column
    return pa.table(arrays).to_pandas()


def _normalise_events(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Cast string (CSV) columns to contract types; values that do not parse are listed per row.

    Timestamps are read as the sources read them (:func:`~tasks.sources.timestamps.parse_timestamps`:
    one format per column, each ISO offset applied to its own value, values without one as UTC)."""
    failures: list[list[str]] = [[] for _ in range(len(frame))]
    out = frame.copy()

    def record(column: str, bad: pd.Series) -> None:
        for position in bad.to_numpy().nonzero()[0]:
            failures[position].append(f"{column}_parses_as_contract_type")

    for column in ("event_id", "user_id", "item_id", "event_type", "session_id", "country"):
        out[column] = out[column].astype("object").where(out[column].notna(), None)
    if not pd.api.types.is_datetime64_any_dtype(out["event_timestamp"]):
        parsed = parse_timestamps(
            out["event_timestamp"], column="event_timestamp", where=where, naive_tz="UTC"
        ).utc.set_axis(out.index)
        record("event_timestamp", parsed.isna() & out["event_timestamp"].notna())
        out["event_timestamp"] = parsed
    out["event_timestamp"] = out["event_timestamp"].dt.as_unit("us")
    for column in ("quantity", "unit_price"):
        if out[column].dtype == object:
            parsed = pd.to_numeric(out[column], errors="coerce")
            bad = parsed.isna() & out[column].notna()
            if column == "quantity":
                fractional = parsed.notna() & (parsed != parsed.round())
                bad = bad | fractional
                parsed = parsed.where(~fractional)
            record(column, bad)
            out[column] = parsed
    out["quantity"] = out["quantity"].astype("Int64")
    out["unit_price"] = out["unit_price"].astype("float64")
    out[_PARSE_FAILURES] = [tuple(f) for f in failures]
    return out


def read_landing_table(day_dir: Path, table: str, schema: pa.Schema) -> pd.DataFrame:
    """Every ``table*.parquet|csv`` file of one landing day as one frame of ``schema``'s columns.

    Refuses (:class:`IngestError`, one line) what the contract refuses: a missing folder, no file, an
    empty, oversized or unreadable file, missing or unexpected columns, parquet columns of another type.
    Parquet columns arrive in the contract's types, CSV columns as strings (the caller parses them).
    Each row carries :data:`SOURCE_FILE` and :data:`SOURCE_ROW`.  Shared with the campaign-log ingest
    (:mod:`tasks.campaigns.ingest`).
    """
    return _read_day(day_dir, table, schema)


def _read_day(day_dir: Path, table: str, schema: pa.Schema) -> pd.DataFrame:
    if not day_dir.is_dir():
        raise IngestError(f"landing folder {day_dir} does not exist")
    files = landing_files(day_dir, table)
    if not files:
        raise IngestError(f"landing folder {day_dir} has no {table}*.parquet|csv files")
    frames = []
    for path in files:
        frame = _read_file(path, schema)
        if table == "events":
            frame = _normalise_events(frame, str(path))
        frame[_SOURCE_FILE] = path.name
        frame[_SOURCE_ROW] = range(len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --- writing partitions ---------------------------------------------------------------------------


_PARQUET_OPTIONS: Final[dict[str, Any]] = {"compression": "zstd", "write_statistics": True}


def _write_parquet(table: pa.Table, path: Path | pa.NativeFile) -> None:
    pq.write_table(table, path, **_PARQUET_OPTIONS)


def _events_table(frame: pd.DataFrame) -> pa.Table:
    ordered = frame.sort_values(["event_timestamp", "event_id"], kind="mergesort")
    return pa.Table.from_pandas(ordered[list(EVENT_COLUMNS)], schema=EVENTS_SCHEMA, preserve_index=False)


def _quarantine_table(frame: pd.DataFrame) -> pa.Table:
    ordered = frame.sort_values([_SOURCE_FILE, _SOURCE_ROW], kind="mergesort")
    nullable = pa.schema([field.with_nullable(True) for field in EVENTS_SCHEMA])
    table = pa.Table.from_pandas(ordered[list(EVENT_COLUMNS)], schema=nullable, preserve_index=False)
    extra = {
        "failed_expectations": pa.array(
            [list(f) for f in ordered["failed_expectations"]], pa.list_(pa.string())
        ),
        "source_file": pa.array(ordered[_SOURCE_FILE].tolist(), pa.string()),
        "source_row": pa.array(ordered[_SOURCE_ROW].tolist(), pa.int64()),
    }
    for name, values in extra.items():
        table = table.append_column(pa.field(name, values.type, nullable=False), values)
    return table


# --- the volume band ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeBand:
    """The row-count band a day must fall in; ``max_rows`` None: not enforced (see ``note``)."""

    min_rows: int
    max_rows: int | None
    note: str


def volume_band(history: Mapping[dt.date, int], day: dt.date, settings: Settings) -> VolumeBand:
    """The volume band of ``day`` from the row counts of earlier lake days (``history``: day -> rows).

    The reference is the median of the same weekday over the previous ``volume_weeks`` weeks: shops
    have strong weekly cycles (the Online Retail II shop hardly trades on Saturdays), and a median is
    not dragged down by one holiday among them.  Rejected days are not in the lake, so they never enter
    a reference.  Until ``volume_min_history`` such days exist the band is not enforced (a new shop, a
    weekday the shop rarely opens, the weeks after a long closure); the note says so.  The band is
    asymmetric: a day below ``1 - volume_band`` of the reference fails (default: half-empty), a busy day
    may be up to ``1 + volume_band_high`` times it (sales peaks are real; a doubled delivery is caught).
    """
    if settings.volume_check == "off":
        return VolumeBand(0, None, "off (SHOPREC_VOLUME_CHECK=off)")
    window_start = day - dt.timedelta(weeks=settings.volume_weeks)
    same_weekday = sorted(d for d in history if window_start <= d < day and d.weekday() == day.weekday())
    weekday = day.strftime("%A")
    if len(same_weekday) < settings.volume_min_history:
        note = (
            f"skipped: {len(same_weekday)} {weekday}s in the lake over the previous "
            f"{settings.volume_weeks} weeks, need {settings.volume_min_history}"
        )
        return VolumeBand(0, None, note)
    counts = sorted(history[d] for d in same_weekday)
    middle = len(counts) // 2
    median = counts[middle] if len(counts) % 2 else (counts[middle - 1] + counts[middle]) / 2
    low = int(median * (1 - settings.volume_band))
    high = int(median * (1 + settings.volume_band_high)) + 1
    return VolumeBand(
        low, high, f"rows within [{low}, {high}] (median {median:.1f} of {len(counts)} {weekday}s)"
    )


def _volume_bounds(settings: Settings, day: dt.date) -> VolumeBand:
    """:func:`volume_band` of ``day`` from the lake's partitions before it (row counts from metadata)."""
    earliest = day - dt.timedelta(weeks=settings.volume_weeks)
    history = {
        d: pq.ParquetFile(partition_dir(settings.events_dir, d) / LAKE_FILE).metadata.num_rows
        for d in list_partitions(settings.events_dir)
        if earliest <= d < day and d.weekday() == day.weekday()
    }
    band = volume_band(history, day, settings)
    log.info("volume band of %s: %s", day.isoformat(), band.note)
    return band


def dominant_users(user_ids: pd.Series, max_share: float, min_users: int = 1) -> dict[str, float]:
    """Users (pseudonyms) holding more than ``max_share`` of the day's rows, with their share.

    Only on days with at least ``min_users`` distinct users: with a handful of customers one of them
    holding a large share is ordinary trade, not a placeholder id or a bot.
    """
    counts = user_ids.value_counts(dropna=True)
    if len(counts) < min_users:
        return {}
    shares = counts / max(len(user_ids), 1)
    return {str(user): round(float(share), 4) for user, share in shares[shares > max_share].items()}


def _catalog_item_ids(settings: Settings) -> set[str]:
    path = settings.items_dir / CATALOG_FILE
    if not path.exists():
        raise IngestError(f"item catalog {path} does not exist; run update_catalog first")
    return set(pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist())


def known_item_ids(settings: Settings, day: dt.date) -> set[str]:
    """Items an event of ``day`` may name: in the validated catalog and landed on or before ``day``.

    After ``update_catalog(day)`` the catalog holds exactly the items landed up to ``day``; a run over
    several days updates the catalog through its last day first, and the landing days keep an event from
    naming an item that only arrives later, so each day is judged as its own daily run would judge it.
    """
    return _catalog_item_ids(settings) & landed_item_ids(settings, day)


# Landing item files read by this process, keyed by (path, size, mtime): a backfill re-reads every
# earlier day's items for each day's catalog; a changed file has another key and is read again.
_LANDING_ITEMS: dict[tuple[str, int, int], pd.DataFrame] = {}


def _landing_items(day_dir: Path) -> pd.DataFrame | None:
    """The day's landing ``items*`` files as one frame (None without any), read once per process.

    The frame is shared: callers copy it before changing it.
    """
    files = landing_files(day_dir, "items")
    if not files:
        return None
    stats = [path.stat() for path in files]
    key = (
        "|".join(str(path) for path in files),
        sum(st.st_size for st in stats),
        max(st.st_mtime_ns for st in stats),
    )
    if key not in _LANDING_ITEMS:
        _LANDING_ITEMS[key] = _read_day(day_dir, "items", ITEMS_SCHEMA)
    return _LANDING_ITEMS[key]


def landed_item_ids(settings: Settings, day: dt.date) -> set[str]:
    """Item ids of the landing ``items*`` files of every day up to and including ``day``."""
    ids: set[str] = set()
    for landing_day in list_partitions(settings.landing_dir):
        if landing_day <= day:
            frame = _landing_items(partition_dir(settings.landing_dir, landing_day))
            if frame is not None:
                ids.update(frame["item_id"].dropna())
    return ids


def validation_result_path(settings: Settings, suite: str, day: dt.date) -> Path:
    """Where the GX validation result of ``suite`` for ``day`` is stored (Data Docs are built from it)."""
    return partition_dir(settings.reports_dir / "validations" / suite, day) / RESULT_FILE


def data_docs_dir(settings: Settings, days: Sequence[dt.date]) -> Path:
    """The Data Docs site of a run over ``days``: ``reports/data_docs/date=D`` for one day, else
    ``reports/data_docs/dates=FIRST_LAST``; keyed on the run's days, so a re-run replaces it."""
    first, last = min(days), max(days)
    if first == last:
        return partition_dir(settings.reports_dir / "data_docs", first)
    return settings.reports_dir / "data_docs" / f"dates={first.isoformat()}_{last.isoformat()}"


def build_run_data_docs(settings: Settings, days: Sequence[dt.date]) -> str:
    """One Data Docs site with the stored validation results (events and item catalog) of ``days``.

    The per-day validations store their results; this renders them once, at the end of a run or a
    backfill (a day whose catalog was unchanged, or whose batch could not be read, has fewer results).
    Returns the site's ``index.html`` as a URI.
    """
    results = [
        path
        for day in sorted(days)
        for suite in ("items", "events")
        if (path := validation_result_path(settings, suite, day)).is_file()
    ]
    return build_data_docs(settings, results, data_docs_dir(settings, days)).as_uri()


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return start, start + dt.timedelta(days=1)


# --- entry points ---------------------------------------------------------------------------------


def _quarantine_unreadable(settings: Settings, day: dt.date, error: ContractError) -> None:
    """``quarantine/date=D/report.json`` for a landing batch that could not be read at all.

    The landing files stay where they are (nothing is deleted); no ``rows.parquet`` is written, as no
    row could be read.  A rerun after the batch is repaired replaces the report.
    """
    report = {
        "day": day.isoformat(),
        "status": "rejected",
        "rows_in": 0,
        "rows_clean": 0,
        "rows_quarantined": 0,
        "failed_expectation_counts": {},
        "table_failures": [],
        "errors": [str(error)],
        "volume_check": "not run (the batch could not be read)",
    }

    def write(tmp: Path) -> None:
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    replace_dir(partition_dir(settings.quarantine_dir, day), write)


def pseudonymise_ids(frame: pd.DataFrame, key: bytes) -> None:
    """Replace user ids and the source ids (event and session ids) by keyed pseudonyms, in place.

    Nulls stay null (the gate reports them); equal raw ids get equal pseudonyms, so event ids stay
    unique and one invoice's lines keep one session id.
    """

    def keyed(column: str) -> None:
        cache: dict[str, str] = {}
        values: list[str | None] = []
        for raw in frame[column]:
            if raw is None or raw != raw:  # None or NaN
                values.append(None)
                continue
            if raw not in cache:
                text = str(raw)
                cache[raw] = (
                    pseudonymize(text, key)
                    if column == "user_id"
                    else pseudonymize_source_id(text, key, column)
                )
            values.append(cache[raw])
        frame[column] = values

    for column in ("user_id", *SOURCE_ID_PREFIXES):
        keyed(column)


def ingest_day(
    settings: Settings, day: dt.date, *, run_id: str, interval_end: dt.datetime | None = None
) -> IngestManifest:
    """Validate landing ``date=day`` and publish its good rows to the lake (see module docstring).

    ``interval_end`` is the run's data-interval end: events after it are "in the future".  It defaults
    to the end of ``day``.  GX's validation result is stored under ``reports/validations/events/``;
    the run's Data Docs are built from it once, by :func:`build_run_data_docs`.
    """
    day_start, day_end = _day_bounds(day)
    # A plain tz-aware datetime: GX mis-handles datetime subclasses such as pendulum.DateTime.
    future_bound = (
        dt.datetime.fromtimestamp(interval_end.timestamp(), tz=dt.UTC)
        if interval_end is not None
        else day_end
    )
    landing_day = partition_dir(settings.landing_dir, day)
    try:
        frame = _read_day(landing_day, "events", EVENTS_SCHEMA)
    except ContractError as exc:
        if landing_day.is_dir():  # a batch that is there but cannot be read: the day is quarantined whole
            _quarantine_unreadable(settings, day, exc)
            raise UnreadableBatch(str(exc)) from exc
        raise

    key = load_key(settings)
    record_key_fingerprint(settings, key)
    pseudonymise_ids(frame, key)

    dominant = dominant_users(frame["user_id"], settings.max_user_share, settings.dominant_user_min_users)
    band = _volume_bounds(settings, day)
    volume_note = band.note
    parameters = {
        "min_rows": band.min_rows,
        "max_rows": band.max_rows,
        "event_types": list(EVENT_TYPES),
        "day_start": day_start,
        "day_end": day_end,
        "interval_end": future_bound,
        # The known items among the day's own: the same rows pass and fail as against the whole
        # catalog, and GX's cost per expectation grows with the size of a value set.
        "known_item_ids": sorted(known_item_ids(settings, day) & set(frame["item_id"].dropna())),
        "dominant_users": sorted(dominant),
    }
    result_path = validation_result_path(settings, "events", day)
    gate = run_gate(
        frame[list(EVENT_COLUMNS)],
        "events",
        parameters,
        settings=settings,
        result_path=result_path,
        run_name=day.isoformat(),
        run_time=day_start,
    )
    failed = [tuple(frame.at[i, _PARSE_FAILURES]) + gate.row_failures.get(i, ()) for i in range(len(frame))]
    frame["failed_expectations"] = failed
    bad_mask = pd.Series([bool(f) for f in failed], index=frame.index)
    good, bad = frame[~bad_mask], frame[bad_mask]
    share = len(bad) / len(frame)
    # A dominant user's rows are well-formed: they are quarantined but do not reject the day.
    counted = bad[[set(f) != {DOMINANT_USER} for f in bad["failed_expectations"]]]
    problems = _gate_problems(gate, counted, len(frame), settings.max_bad_row_share)
    status = "rejected" if problems else "accepted"

    quarantine_dir = partition_dir(settings.quarantine_dir, day)
    report = {
        "day": day.isoformat(),
        "status": status,
        "rows_in": len(frame),
        "rows_clean": 0 if problems else len(good),
        "rows_quarantined": len(bad),
        "bad_row_share": round(share, 6),
        "max_bad_row_share": settings.max_bad_row_share,
        "failed_expectation_counts": _counts(bad),
        "table_failures": list(gate.table_failures),
        "errors": list(gate.errors),
        "volume_check": volume_note,
        # pseudonyms (never raw ids) of users above max_user_share, with their share of the day
        "dominant_users": dominant,
        "max_user_share": settings.max_user_share,
    }

    def write_quarantine(tmp: Path) -> None:
        _write_parquet(_quarantine_table(bad), tmp / QUARANTINE_FILE)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    replace_dir(quarantine_dir, write_quarantine)
    if problems:
        message = (
            f"ingest of {day.isoformat()} rejected, nothing written to the lake: {'; '.join(problems)} "
            f"[volume check: {volume_note}]"
        )
        log.error(message)
        raise IngestRejected(message)

    lake_dir = partition_dir(settings.events_dir, day)
    replace_dir(lake_dir, lambda tmp: _write_parquet(_events_table(good), tmp / LAKE_FILE))
    log.info(
        "ingested %s: %d rows in, %d to the lake, %d quarantined (%s)",
        day.isoformat(),
        len(frame),
        len(good),
        len(bad),
        report["failed_expectation_counts"],
    )
    return IngestManifest(
        day=day.isoformat(),
        run_id=run_id,
        rows_in=len(frame),
        rows_clean=len(good),
        rows_quarantined=len(bad),
        lake_uri=(lake_dir / LAKE_FILE).as_uri(),
        quarantine_uri=quarantine_dir.as_uri(),
        validation_result_uri=result_path.as_uri(),
        volume_check=volume_note,
    )


def rejected_days(settings: Settings, first: dt.date, last: dt.date) -> list[dt.date]:
    """Days in ``[first, last]`` whose ingest was rejected: a ``rejected`` quarantine report, no lake day.

    The rejected rows stay in ``quarantine/date=D/`` with that report; this is how later stages
    (features, training, the demo summary) learn which days of their window are missing.
    """
    days = []
    for day in list_partitions(settings.quarantine_dir):
        if not first <= day <= last or partition_dir(settings.events_dir, day).is_dir():
            continue
        report_path = partition_dir(settings.quarantine_dir, day) / REPORT_FILE
        if report_path.is_file() and json.loads(report_path.read_text()).get("status") == "rejected":
            days.append(day)
    return days


def ingest_or_reject(
    settings: Settings, day: dt.date, *, run_id: str, interval_end: dt.datetime | None = None
) -> dict[str, Any]:
    """:func:`ingest_day` for orchestrators that go on past a rejected day (XCom-sized dict).

    An accepted day: its :class:`IngestManifest` fields with ``status`` "accepted".  A rejected day (the
    gate refused it, or its batch is there but cannot be read; either way it is quarantined whole with
    its report): ``{"day", "status": "rejected", "reason"}``.  A day without a landing folder still
    raises: there is nothing to quarantine.
    """
    try:
        manifest = ingest_day(settings, day, run_id=run_id, interval_end=interval_end)
    except IngestRejected as exc:
        return {"day": day.isoformat(), "status": "rejected", "reason": str(exc)}
    except UnreadableBatch as exc:
        return {"day": day.isoformat(), "status": "rejected", "reason": f"unreadable batch: {exc}"}
    return {**asdict(manifest), "status": "accepted"}


def run_days(
    conf: Mapping[str, Any] | None, start: dt.datetime, end: dt.datetime
) -> tuple[list[dt.date], dt.datetime | None]:
    """The days an ``ingest_events`` run covers (:func:`tasks.io.run_days`) and the "future" bound of
    its events.

    A backfill run names its days in the run conf, ``{"days": ["YYYY-MM-DD", ...]}``: each day is then
    judged as its own daily run would judge it (bound: the end of the day).  Otherwise the days of the
    data interval ``[start, end)``, bound ``end``.
    """
    try:
        days = io_run_days(conf, (), (start, end))
    except ValueError as exc:
        raise ContractError(f"run conf days: {exc}") from exc
    return days, (None if (conf or {}).get("days") else end)


def ingest_days(
    settings: Settings, days: Sequence[dt.date], *, run_id: str, interval_end: dt.datetime | None
) -> list[dict[str, Any]]:
    """:func:`ingest_or_reject` for each of ``days`` in order, in this process.

    In order, because a day's volume band is read from the lake days accepted before it; in one process,
    so that the GX context is built once (see :mod:`tasks.validation`).
    """
    return [ingest_or_reject(settings, day, run_id=run_id, interval_end=interval_end) for day in sorted(days)]


def asset_extra(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``events_clean`` asset event's extra for :func:`ingest_or_reject` outcomes: the accepted
    ``days`` (what later stages build on), their row counts, and ``rejected_days`` with their reasons."""
    accepted = [o for o in outcomes if o["status"] == "accepted"]
    return {
        "days": [o["day"] for o in accepted],
        "rows_clean": {o["day"]: o["rows_clean"] for o in accepted},
        "rows_quarantined": {o["day"]: o["rows_quarantined"] for o in accepted},
        "rejected_days": {o["day"]: o["reason"][:500] for o in outcomes if o["status"] == "rejected"},
    }


def rejection_summary(outcomes: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the rejected days of ``outcomes`` and why; empty when none was rejected."""
    rejected = [o for o in outcomes if o["status"] == "rejected"]
    if not rejected:
        return ""
    return (
        f"{len(rejected)} of {len(outcomes)} days rejected and quarantined (the others went on): "
        + "; ".join(f"{o['day']}: {o['reason']}" for o in rejected)
    )


def _counts(bad: pd.DataFrame) -> dict[str, int]:
    counts: dict[str, int] = {}
    for failed in bad["failed_expectations"]:
        for name in failed:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _gate_problems(gate: GateResult, bad: pd.DataFrame, rows_in: int, threshold: float) -> list[str]:
    share = len(bad) / rows_in
    problems = [f"table-level expectation failed: {failure}" for failure in gate.table_failures]
    problems += [f"expectation error: {error}" for error in gate.errors]
    if share > threshold:
        counts = ", ".join(f"{name}={count}" for name, count in _counts(bad).items())
        problems.append(
            f"{len(bad)} of {rows_in} rows failed row-level expectations, {share:.1%} > threshold "
            f"{threshold:.1%} ({counts})"
        )
    return problems


def update_catalog(settings: Settings, day: dt.date) -> CatalogManifest:
    """Merge landing ``items*`` files of all days up to ``day`` into ``lake/items/items.parquet``.

    A merged catalog byte-identical to the one in the lake that last passed the same version of the
    items suite (``_validated.json`` beside it records the catalog's and the suite's SHA-256) is not
    validated or written again; any other catalog goes through the suite before it replaces the lake's.
    """
    days = [d for d in list_partitions(settings.landing_dir) if d <= day]
    frames = []
    for landing_day in days:
        frame = _landing_items(partition_dir(settings.landing_dir, landing_day))
        if frame is None:
            continue
        frames.append(frame.assign(_landing_day=landing_day))
    if not frames:
        raise IngestError(f"no items*.parquet|csv in any landing day up to {day.isoformat()}")
    merged = pd.concat(frames, ignore_index=True)
    merged["first_seen"] = pd.to_datetime(merged["first_seen"], utc=True, format="ISO8601").dt.as_unit("us")
    merged["price"] = pd.to_numeric(merged["price"], errors="raise").astype("float64")
    merged = merged.sort_values(["item_id", "_landing_day", _SOURCE_FILE, _SOURCE_ROW], kind="mergesort")
    first_seen = merged.groupby("item_id", sort=True)["first_seen"].min()
    latest = merged.groupby("item_id", sort=True).tail(1).set_index("item_id")
    catalog = latest.assign(first_seen=first_seen).reset_index()[list(ITEM_COLUMNS)]
    catalog = catalog.sort_values("item_id", kind="mergesort").reset_index(drop=True)
    new_today = int((catalog["first_seen"] >= _day_bounds(day)[0]).sum())
    table = pa.Table.from_pandas(catalog, schema=ITEMS_SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    _write_parquet(table, sink)
    content = sink.getvalue().to_pybytes()
    target = settings.items_dir / CATALOG_FILE
    state = {
        "catalog_sha256": hashlib.sha256(content).hexdigest(),
        "suite_sha256": suite_fingerprint(settings, "items"),
    }
    result_path = validation_result_path(settings, "items", day)
    unchanged = _catalog_already_validated(settings, state)
    if unchanged:
        result_path.unlink(missing_ok=True)  # this day validated nothing (a re-run of an older day may have)
        log.info(
            "item catalog up to %s: %d items, unchanged since it passed the items suite; not validated again",
            day.isoformat(),
            len(catalog),
        )
    else:
        _validate_and_write_catalog(settings, day, catalog, content, state)
        log.info(
            "item catalog up to %s: %d items, %d first seen that day",
            day.isoformat(),
            len(catalog),
            new_today,
        )
    return CatalogManifest(
        day=day.isoformat(),
        items=len(catalog),
        items_new_today=new_today,
        catalog_uri=target.as_uri(),
        validation="unchanged" if unchanged else "validated",
        validation_result_uri="" if unchanged else result_path.as_uri(),
    )


def _validate_and_write_catalog(
    settings: Settings, day: dt.date, catalog: pd.DataFrame, content: bytes, state: Mapping[str, str]
) -> None:
    """The items suite on ``catalog``; if it passes, ``content`` (its parquet) replaces the lake's."""
    gate = run_gate(
        catalog,
        "items",
        {},
        settings=settings,
        result_path=validation_result_path(settings, "items", day),
        run_name=day.isoformat(),
        run_time=_day_bounds(day)[0],
    )
    if gate.row_failures or not gate.table_ok:
        rows = ", ".join(
            f"{catalog.at[i, 'item_id']}: {'/'.join(names)}"
            for i, names in sorted(gate.row_failures.items())[:20]
        )
        raise IngestRejected(
            f"item catalog up to {day.isoformat()} failed the items suite: "
            + "; ".join([*gate.table_failures, *gate.errors, rows])
        )
    target = settings.items_dir / CATALOG_FILE
    atomic_write_bytes(target, content)
    # Recorded after the catalog is in place: a crash in between leaves a stale record, whose hash
    # does not match the new catalog, so the next run validates again rather than trusting it.
    atomic_write_json(settings.items_dir / CATALOG_STATE_FILE, state)


def _catalog_already_validated(settings: Settings, state: Mapping[str, str]) -> bool:
    """The lake's catalog has ``state``'s bytes and passed the items suite of ``state``'s version."""
    target, record = settings.items_dir / CATALOG_FILE, settings.items_dir / CATALOG_STATE_FILE
    if not target.is_file() or not record.is_file():
        return False
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    on_disk = hashlib.sha256(target.read_bytes()).hexdigest()
    return recorded == dict(state) and on_disk == state["catalog_sha256"]
