"""Ingest one landing day of campaign logs: read, pseudonymise, gate with GX, split lake / quarantine.

The campaign logs land like the events (``landing/date=D/offers*.parquet|csv`` and
``exposures*.parquet|csv``, docs/data-contract.md) and go through the same steps, reusing
:mod:`tasks.ingest`'s reader and :mod:`tasks.pseudonymize`'s key:

* ``offers`` (optional on a day: the latest offers landed on or before D apply): the ``offers`` suite,
  all or nothing; written to ``lake/campaigns/offers/date=D/part-0.parquet``;
* ``exposures``: user ids replaced by keyed HMAC pseudonyms (the events' key, so a customer has one
  pseudonym in events and campaigns) and decision ids by keyed source-id pseudonyms before anything is
  written; the ``exposures`` suite (known actions: the offers in force and ``no_offer``; a propensity in
  [``MIN_PROPENSITY``, 1], which off-policy evaluation divides by); rows that fail, or whose values do not parse as the
  contract's types, or whose decision lies outside day D, go to ``quarantine/campaigns/date=D/rows.parquet``
  with the names of what they failed, counted per reason in ``report.json``; the others to
  ``lake/campaigns/exposures/date=D/part-0.parquet``.

A day is rejected and nothing of it reaches the lake when a file is malformed (unreadable, wrong or
missing columns, wrong types), the offers break their suite, a table-level expectation fails or more
than ``settings.max_bad_row_share`` of its rows fail: :class:`CampaignDayRejected`, one line, and the
quarantine report says why.  Partitions are written to a temporary folder and renamed into place,
sorted deterministically, so a re-run replaces the day (identical input and key: identical files); a
re-run without an offers file removes the day's earlier offers partition (the offers in force are then
the latest landed before D, as on a first run without one).

A day is published as a whole: the day's marker ``lake/campaigns/published/date=D.json``
(:func:`~tasks.campaigns.contracts.published_dir`) is removed before either partition is rewritten and
written after both, and the readers (:func:`offers_in_force`, :func:`read_lake_exposures`) take only
days with a marker, so they see one ingest run's offers and exposures of a day together or not that day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.campaigns.contracts import (
    EXPOSURE_COLUMNS,
    EXPOSURES_SCHEMA,
    OFFER_COLUMNS,
    OFFERS_SCHEMA,
    campaigns_quarantine_dir,
    exposures_lake_dir,
    offers_lake_dir,
    published_dir,
)
from tasks.campaigns.validation import exposures_parameters, validate_offers
from tasks.config import Settings
from tasks.contracts import ContractError, landing_files, parse_partition, partition_dir
from tasks.ingest import (
    LAKE_FILE,
    QUARANTINE_FILE,
    REPORT_FILE,
    SOURCE_FILE,
    SOURCE_ROW,
    read_landing_table,
    validation_result_path,
)
from tasks.io import atomic_write_json, replace_dir
from tasks.pseudonymize import load_key, pseudonymize, pseudonymize_source_id, record_key_fingerprint
from tasks.sources.timestamps import parse_timestamps
from tasks.validation import run_gate

log = logging.getLogger(__name__)

FAILED: Final = "failed_expectations"
OUTSIDE_DAY: Final = "decision_timestamp_in_partition_day"
_PARQUET_OPTIONS: Final[dict[str, Any]] = {"compression": "zstd", "write_statistics": True}
_INTEGERS: Final = ("position", "attribution_hours")
_FLOATS: Final = ("propensity", "margin", "redemption_cost")
_BOOLEANS: Final = ("clicked", "purchased")
_TRUE: Final = frozenset({"true", "1", "t", "yes"})
_FALSE: Final = frozenset({"false", "0", "f", "no"})


class CampaignDayRejected(RuntimeError):
    """A landing day of campaign logs refused whole; the message says why in one line."""


def _day_bounds(day: dt.date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(dt.datetime.combine(day, dt.time(), dt.UTC))
    return start, start + pd.Timedelta(days=1)


# --- reading ---------------------------------------------------------------------------------------
def _parse_offers(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """CSV offers as contract types (parquet ones already are); a value that does not parse refuses."""
    out = frame.copy()
    for column in ("value", "unit_cost"):
        if out[column].dtype == object:
            parsed = pd.to_numeric(out[column], errors="coerce")
            bad = parsed.isna() & out[column].notna()
            if bad.any():
                raise ContractError(
                    f"{where}: offers column {column!r} has {int(bad.sum())} non-numeric values"
                )
            out[column] = parsed.astype("float64")
    for column in ("offer_id", "kind", "scope"):
        out[column] = out[column].astype("object").where(out[column].notna(), None)
    return out


def _parse_exposures(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Cast CSV columns to the contract's types; a value that does not parse is null and named per row
    (``COLUMN_parses_as_contract_type``) in ``_parse_failures``."""
    out = frame.copy()
    failures: list[list[str]] = [[] for _ in range(len(out))]

    def record(column: str, bad: pd.Series) -> None:
        for position in bad.to_numpy().nonzero()[0]:
            failures[position].append(f"{column}_parses_as_contract_type")

    for column in ("decision_id", "user_id", "offer_id", "policy_name", "policy_version"):
        out[column] = out[column].astype("object").where(out[column].notna(), None)
    if not pd.api.types.is_datetime64_any_dtype(out["decision_timestamp"]):
        parsed = parse_timestamps(
            out["decision_timestamp"], column="decision_timestamp", where=where, naive_tz="UTC"
        ).utc.set_axis(out.index)
        record("decision_timestamp", parsed.isna() & out["decision_timestamp"].notna())
        out["decision_timestamp"] = parsed
    out["decision_timestamp"] = out["decision_timestamp"].dt.as_unit("us")
    for column in (*_INTEGERS, *_FLOATS):
        if out[column].dtype == object:
            parsed = pd.to_numeric(out[column], errors="coerce")
            bad = parsed.isna() & out[column].notna()
            if column in _INTEGERS:
                fractional = parsed.notna() & (parsed != parsed.round())
                bad, parsed = bad | fractional, parsed.where(~fractional)
            record(column, bad)
            out[column] = parsed
    for column in _BOOLEANS:
        if out[column].dtype == object:
            text = out[column].map(lambda v: v.strip().lower() if isinstance(v, str) else v)
            parsed = text.map(lambda v: True if v in _TRUE else (False if v in _FALSE else None))
            record(column, parsed.isna() & out[column].notna())
            out[column] = parsed.astype("boolean")
    for column in _INTEGERS:
        out[column] = out[column].astype("Int64")
    for column in _FLOATS:
        out[column] = out[column].astype("float64")
    out["_parse_failures"] = [tuple(f) for f in failures]
    return out


def marker_path(settings: Settings, day: dt.date) -> Path:
    """Day ``day``'s publication marker (:func:`~tasks.campaigns.contracts.published_dir`)."""
    return published_dir(settings) / f"{partition_dir(Path(), day).name}.json"


def published_days(settings: Settings) -> list[dt.date]:
    """Sorted days whose offers and exposures partitions are published (their marker exists)."""
    folder = published_dir(settings)
    if not folder.is_dir():
        return []
    days = (parse_partition(p.stem) for p in folder.iterdir() if p.is_file() and p.suffix == ".json")
    return sorted(d for d in days if d is not None)


def _retract(settings: Settings, day: dt.date) -> None:
    """Unpublish day ``day`` (its marker gone, durably) before any of its partitions changes."""
    marker = marker_path(settings, day)
    if marker.exists():
        marker.unlink()
        fd = os.open(marker.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_partition(folder: Path, day: dt.date) -> None:
    stale = partition_dir(folder, day)
    if stale.is_dir():
        retired = stale.with_name(f".{stale.name}.{uuid.uuid4().hex}.old")
        os.replace(stale, retired)  # readers see the folder or nothing, never part of it
        shutil.rmtree(retired)


def offers_in_force(settings: Settings, day: dt.date) -> pd.DataFrame | None:
    """The offers of the latest published day on or before ``day`` that landed offers (None before any)."""
    folder = offers_lake_dir(settings)
    days = [
        d for d in published_days(settings) if d <= day and (partition_dir(folder, d) / LAKE_FILE).is_file()
    ]
    if not days:
        return None
    return pd.read_parquet(partition_dir(folder, days[-1]) / LAKE_FILE)


# --- writing ---------------------------------------------------------------------------------------
def _lake_table(frame: pd.DataFrame) -> pa.Table:
    ordered = frame.sort_values(["decision_timestamp", "decision_id"], kind="mergesort")
    return pa.Table.from_pandas(
        ordered[list(EXPOSURE_COLUMNS)], schema=EXPOSURES_SCHEMA, preserve_index=False
    )


def _quarantine_table(frame: pd.DataFrame) -> pa.Table:
    ordered = frame.sort_values([SOURCE_FILE, SOURCE_ROW], kind="mergesort")
    nullable = pa.schema([field.with_nullable(True) for field in EXPOSURES_SCHEMA])
    table = pa.Table.from_pandas(ordered[list(EXPOSURE_COLUMNS)], schema=nullable, preserve_index=False)
    extra = {
        FAILED: pa.array([list(f) for f in ordered[FAILED]], pa.list_(pa.string())),
        "source_file": pa.array(ordered[SOURCE_FILE].tolist(), pa.string()),
        "source_row": pa.array(ordered[SOURCE_ROW].tolist(), pa.int64()),
    }
    for name, values in extra.items():
        table = table.append_column(pa.field(name, values.type, nullable=False), values)
    return table


def _write_report(settings: Settings, day: dt.date, report: dict[str, Any], rows: pa.Table | None) -> None:
    def write(tmp: Path) -> None:
        if rows is not None:
            pq.write_table(rows, tmp / QUARANTINE_FILE, **_PARQUET_OPTIONS)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    replace_dir(partition_dir(campaigns_quarantine_dir(settings), day), write)


def _reject(settings: Settings, day: dt.date, reason: str, rows_in: int = 0, rows: pa.Table | None = None,
            counts: dict[str, int] | None = None) -> CampaignDayRejected:  # fmt: skip
    """Record day ``day`` as rejected (its lake partitions removed) and build the one-line error."""
    _retract(settings, day)  # an earlier accepted run of the same day: the day is now refused whole
    for folder in (exposures_lake_dir(settings), offers_lake_dir(settings)):
        _remove_partition(folder, day)
    report = {
        "day": day.isoformat(),
        "status": "rejected",
        "rows_in": rows_in,
        "rows_clean": 0,
        "rows_quarantined": rows.num_rows if rows is not None else 0,
        "failed_expectation_counts": counts or {},
        "reason": reason,
    }
    _write_report(settings, day, report, rows)
    message = f"campaign logs of {day.isoformat()} rejected, nothing written to the lake: {reason}"
    log.error(message)
    return CampaignDayRejected(message)


# --- entry points ----------------------------------------------------------------------------------
def pseudonymise_exposures(frame: pd.DataFrame, key: bytes) -> None:
    """Replace ``user_id`` (user pseudonym, as for events) and ``decision_id`` (source-id pseudonym) in
    place; nulls stay null (the gate reports them)."""
    for column in ("user_id", "decision_id"):
        cache: dict[str, str] = {}
        values: list[str | None] = []
        for raw in frame[column]:
            if raw is None or raw != raw:
                values.append(None)
                continue
            text = str(raw)
            if text not in cache:
                cache[text] = (
                    pseudonymize(text, key)
                    if column == "user_id"
                    else pseudonymize_source_id(text, key, column)
                )
            values.append(cache[text])
        frame[column] = values


def ingest_campaign_day(settings: Settings, day: dt.date) -> dict[str, Any]:
    """Ingest landing ``date=day``'s offers and exposures (module docstring); the day's outcome.

    Returns ``{"day", "status": "accepted", "rows_in", "rows_clean", "rows_quarantined", "reasons",
    "lake_uri"}``; ``{"day", "status": "none"}`` when the day landed no exposures.  Raises
    :class:`CampaignDayRejected` for a refused day and :class:`~tasks.contracts.ContractError` when the
    landing folder does not exist.
    """
    landing = partition_dir(settings.landing_dir, day)
    if not landing.is_dir():
        raise ContractError(f"landing folder {landing} does not exist")
    if not landing_files(landing, "exposures"):
        return {"day": day.isoformat(), "status": "none"}
    try:
        offers = None
        if landing_files(landing, "offers"):
            raw_offers = read_landing_table(landing, "offers", OFFERS_SCHEMA)
            parsed = _parse_offers(raw_offers, str(landing))[list(OFFER_COLUMNS)]
            offers = validate_offers(parsed, settings=settings)
        frame = _parse_exposures(read_landing_table(landing, "exposures", EXPOSURES_SCHEMA), str(landing))
    except ContractError as exc:
        raise _reject(settings, day, str(exc)) from exc
    in_force = offers if offers is not None else offers_in_force(settings, day - dt.timedelta(days=1))
    if in_force is None:
        raise _reject(settings, day, f"no offers landed on or before {day.isoformat()}", len(frame))

    key = load_key(settings)
    record_key_fingerprint(settings, key)
    pseudonymise_exposures(frame, key)
    start, end = _day_bounds(day)
    gate = run_gate(
        frame[list(EXPOSURE_COLUMNS)],
        "exposures",
        exposures_parameters(in_force["offer_id"].astype(str)),
        settings=settings,
        result_path=validation_result_path(settings, "exposures", day),
        run_name=day.isoformat(),
        run_time=start.to_pydatetime(),
    )
    stamps = frame["decision_timestamp"]
    outside = stamps.notna() & ((stamps < start) | (stamps >= end))
    frame[FAILED] = [
        tuple(frame.at[i, "_parse_failures"])
        + gate.row_failures.get(i, ())
        + ((OUTSIDE_DAY,) if outside.iat[i] else ())
        for i in range(len(frame))
    ]
    bad_mask = frame[FAILED].map(bool)
    good, bad = frame[~bad_mask], frame[bad_mask]
    counts = dict(sorted(Counter(name for names in bad[FAILED] for name in names).items()))
    problems = [f"table-level expectation failed: {f}" for f in gate.table_failures]
    problems += [f"expectation error: {e}" for e in gate.errors]
    share = len(bad) / len(frame)
    if share > settings.max_bad_row_share:
        listed = ", ".join(f"{name}={count}" for name, count in counts.items())
        problems.append(
            f"{len(bad)} of {len(frame)} exposure rows failed row-level expectations, {share:.1%} > "
            f"threshold {settings.max_bad_row_share:.1%} ({listed})"
        )
    if problems:
        raise _reject(settings, day, "; ".join(problems), len(frame), _quarantine_table(bad), counts)

    lake = partition_dir(exposures_lake_dir(settings), day)
    _retract(settings, day)  # readers lose the day until both partitions below are in place
    if offers is not None:
        table = pa.Table.from_pandas(
            offers.sort_values("offer_id", kind="mergesort")[list(OFFER_COLUMNS)],
            schema=OFFERS_SCHEMA,
            preserve_index=False,
        )
        replace_dir(
            partition_dir(offers_lake_dir(settings), day),
            lambda tmp: pq.write_table(table, tmp / LAKE_FILE, **_PARQUET_OPTIONS),
        )
    else:  # a re-run without an offers file: the day's earlier offers no longer apply
        _remove_partition(offers_lake_dir(settings), day)
    replace_dir(lake, lambda tmp: pq.write_table(_lake_table(good), tmp / LAKE_FILE, **_PARQUET_OPTIONS))
    atomic_write_json(
        marker_path(settings, day),
        {"day": day.isoformat(), "offers": offers is not None, "exposures": len(good)},
    )
    report = {
        "day": day.isoformat(),
        "status": "accepted",
        "rows_in": len(frame),
        "rows_clean": len(good),
        "rows_quarantined": len(bad),
        "bad_row_share": round(share, 6),
        "max_bad_row_share": settings.max_bad_row_share,
        "failed_expectation_counts": counts,
    }
    _write_report(settings, day, report, _quarantine_table(bad))
    log.info(
        "campaign logs of %s: %d exposures in, %d to the lake, %d quarantined %s",
        day.isoformat(),
        len(frame),
        len(good),
        len(bad),
        counts,
    )
    return {
        "day": day.isoformat(),
        "status": "accepted",
        "rows_in": len(frame),
        "rows_clean": len(good),
        "rows_quarantined": len(bad),
        "reasons": counts,
        "lake_uri": (lake / LAKE_FILE).as_uri(),
    }


def ingest_campaign_days(settings: Settings, days: Sequence[dt.date]) -> list[dict[str, Any]]:
    """:func:`ingest_campaign_day` for each of ``days`` in order (offers in force carry forward); a
    rejected day is ``{"day", "status": "rejected", "reason"}`` and the others go on."""
    outcomes = []
    for day in sorted(days):
        try:
            outcomes.append(ingest_campaign_day(settings, day))
        except CampaignDayRejected as exc:
            outcomes.append({"day": day.isoformat(), "status": "rejected", "reason": str(exc)})
    return outcomes


def asset_extra(outcomes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``exposures`` asset event's extra: the accepted ``days``, row counts, rejected days."""
    accepted = [o for o in outcomes if o["status"] == "accepted"]
    return {
        "days": [o["day"] for o in accepted],
        "rows_clean": {o["day"]: o["rows_clean"] for o in accepted},
        "rows_quarantined": {o["day"]: o["rows_quarantined"] for o in accepted},
        "rejected_days": {o["day"]: o["reason"][:500] for o in outcomes if o["status"] == "rejected"},
    }


def read_lake_exposures(settings: Settings, first: dt.date, last: dt.date) -> pd.DataFrame:
    """The lake's exposures of the published days ``[first, last]`` (empty frame of the contract
    without any)."""
    folder = exposures_lake_dir(settings)
    files = [partition_dir(folder, d) / LAKE_FILE for d in published_days(settings) if first <= d <= last]
    if not files:
        return EXPOSURES_SCHEMA.empty_table().to_pandas()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
