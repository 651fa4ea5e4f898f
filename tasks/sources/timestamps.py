"""Timestamp columns as shops export them -> UTC, the format detected once from the whole column.

One function for every source (:func:`parse_timestamps`): the generic events loader (``shoprec load``)
and the Online Retail adapter differ only in how they read a time written without an offset (UTC for
the loader, the shop's wall clock, Europe/London, for Online Retail).

Accepted: datetime columns (parquet, xlsx), ISO 8601 strings with or without an offset (``Z``,
``+01:00``; each value's own offset is applied), Excel serial days (``40148.35``), and text dates
month-first or day-first with 2- or 4-digit years (:data:`TEXT_DATE_FORMATS`).  The format is chosen
once from all the column's values (:func:`detect_format`), never guessed row by row: a value the chosen
format cannot read becomes NaT, and each caller decides what that means (a refusal, a counted drop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from tasks.contracts import ContractError

ISO8601: Final = "ISO8601"
EXCEL_SERIAL: Final = "excel-serial"
DATETIME: Final = "datetime"  # the column already holds datetimes (parquet, xlsx)

# Text date formats shops export; one is chosen for the whole column.
TEXT_DATE_FORMATS: Final = tuple(
    f"{date} {time}".strip()
    for date in ("%m/%d/%Y", "%d/%m/%Y", "%m/%d/%y", "%d/%m/%y", "%d.%m.%Y", "%d.%m.%y", "%d-%m-%Y")
    for time in ("%H:%M", "%H:%M:%S", "")
)
# Excel serial dates: days since 1899-12-30; 20000..80000 is 1954..2119.
EXCEL_EPOCH: Final = pd.Timestamp("1899-12-30")
_EXCEL_SERIAL_RANGE: Final = (20000.0, 80000.0)
# An ISO value that carries its own offset: a time of day followed by Z or +-HH[:MM].
_ISO_OFFSET: Final = re.compile(
    r"[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE
)


def describe(fmt: str) -> str:
    """A format as a person reads it in an error message."""
    return {
        ISO8601: "ISO 8601",
        EXCEL_SERIAL: "Excel serial days",
        DATETIME: "datetimes",
    }.get(fmt, fmt)


def _in_order_share(parsed: pd.Series) -> float:
    """Share of consecutive parsed values in non-decreasing order (exports are mostly in time order)."""
    values = parsed.dropna()
    return float((values.diff().dropna() >= pd.Timedelta(0)).mean()) if len(values) > 1 else 0.0


def detect_format(text: pd.Series, column: str, where: str) -> str:
    """The one format that reads the text column ``text`` best, decided from the whole column.

    :data:`ISO8601`, :data:`EXCEL_SERIAL` or one of :data:`TEXT_DATE_FORMATS`: the one that parses the
    most distinct values.  Day-first and month-first formats that parse equally many (every day <= 12)
    are told apart by which puts the rows in time order more often; if that ties too, the column is
    refused as ambiguous (:class:`ContractError`).
    """
    values = pd.Series(text.dropna().unique()).astype(str)
    if values.empty:
        return ISO8601
    numbers = pd.to_numeric(values, errors="coerce")
    low, high = _EXCEL_SERIAL_RANGE
    if numbers.notna().all() and numbers.between(low, high).all():
        return EXCEL_SERIAL
    scores = {ISO8601: int(pd.to_datetime(values, format=ISO8601, errors="coerce", utc=True).notna().sum())}
    for fmt in TEXT_DATE_FORMATS:
        scores[fmt] = int(pd.to_datetime(values, format=fmt, errors="coerce").notna().sum())
    best = max(scores.values())
    if best == 0:
        return ISO8601  # nothing parses: every value is unreadable, the caller says so
    tied = [fmt for fmt, score in scores.items() if score == best]
    if len(tied) == 1:
        return tied[0]
    ordered = {fmt: _in_order_share(pd.to_datetime(text, format=fmt, errors="coerce")) for fmt in tied}
    top = max(ordered.values())
    winners = [fmt for fmt, share in ordered.items() if share == top]
    if len(winners) > 1:
        raise ContractError(
            f"{where}: {column} is ambiguous: {' and '.join(winners)} read every value alike; "
            "convert it to ISO dates (YYYY-MM-DD HH:MM)"
        )
    return winners[0]


@dataclass(frozen=True)
class ParsedTimestamps:
    """A timestamp column read in its one format.

    ``utc``: ``datetime64[us, UTC]``, NaT where the value is missing or the format cannot read it.
    ``ambiguous``: naive values in the repeated hour of an autumn clock change, read as standard time.
    ``nonexistent``: naive values in the skipped hour of a spring clock change, shifted forward.
    """

    utc: pd.Series
    fmt: str
    ambiguous: pd.Series
    nonexistent: pd.Series


def _localize(naive: pd.Series, tz: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Wall-clock times in ``tz`` -> UTC; ambiguous times read as standard time, missing ones shifted
    forward.  Returns the UTC times and masks of the ambiguous and the non-existent local times."""
    naive = naive.astype("datetime64[us]")
    probe = naive.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    odd = probe.isna() & naive.notna()
    ambiguous = pd.Series(False, index=naive.index)
    nonexistent = pd.Series(False, index=naive.index)
    if odd.any():
        shifted = naive[odd].dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
        nonexistent[odd] = shifted.notna()
        ambiguous[odd] = shifted.isna()
        fixed = naive[odd].dt.tz_localize(
            tz, ambiguous=np.zeros(int(odd.sum()), dtype=bool), nonexistent="shift_forward"
        )
        probe = probe.copy()
        probe[odd] = fixed
    return probe.dt.tz_convert("UTC"), ambiguous, nonexistent


def parse_timestamps(values: pd.Series, *, column: str, where: str, naive_tz: str) -> ParsedTimestamps:
    """``values`` as UTC times in the one format :func:`detect_format` chose for the whole column.

    Values without an offset (naive datetimes, ISO strings without one, Excel serials, text dates) are
    wall-clock times in ``naive_tz``; an ISO value with an offset is converted with its own offset.
    """
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        if getattr(values.dt, "tz", None) is not None:
            utc = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
            none = pd.Series(False, index=values.index)
            return ParsedTimestamps(utc, DATETIME, none, none.copy())
        fmt, naive = DATETIME, values
        aware = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    else:
        text = values.astype("string").str.strip()
        text = text.mask(text == "")
        fmt = detect_format(text, column, where)
        aware = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
        if fmt == EXCEL_SERIAL:
            days = pd.to_numeric(text, errors="coerce")
            naive = (EXCEL_EPOCH + pd.to_timedelta(days, unit="D")).dt.round("s")
        elif fmt == ISO8601:
            offset = text.str.contains(_ISO_OFFSET).fillna(False).astype(bool)
            if offset.any():
                aware[offset] = pd.to_datetime(text[offset], format=ISO8601, errors="coerce", utc=True)
            naive = pd.to_datetime(text.where(~offset), format=ISO8601, errors="coerce")
        else:
            naive = pd.to_datetime(text, format=fmt, errors="coerce")
    local, ambiguous, nonexistent = _localize(naive, naive_tz)
    utc = aware.where(aware.notna(), local.astype("datetime64[us, UTC]"))
    return ParsedTimestamps(utc.astype("datetime64[us, UTC]"), fmt, ambiguous, nonexistent)
