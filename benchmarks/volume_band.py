"""Replay a shop's daily row counts through the ingest volume band: which days would it reject?

    python -m benchmarks.volume_band PATH_TO_ONLINE_RETAIL_FILE [--weeks 4 6] [--min-history 2 3]

The file goes through the Online Retail adapter into a temporary landing zone (the rows ingest would
see), then each day, in order, is judged by :func:`tasks.ingest.volume_band` (the code the gate runs)
against the days accepted before it: a rejected day never enters the lake, so it never enters a later
reference, exactly as in a backfill.  One line per setting: how many days it rejects, and which.
Quarantined rows are not subtracted (real shop data loses ~0 rows to the row-level expectations).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq

from tasks.config import Settings, get_settings
from tasks.ingest import volume_band
from tasks.sources.online_retail import load_online_retail


def landing_counts(path: Path) -> dict[dt.date, int]:
    """Rows per landing day of the Online Retail file ``path`` (the adapter's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest, _ = load_online_retail(path, Path(tmp))
        return {
            day: pq.ParquetFile(Path(tmp) / f"date={day.isoformat()}" / "events.parquet").metadata.num_rows
            for day in manifest.days
        }


def rejected_days(counts: Mapping[dt.date, int], settings: Settings) -> list[dt.date]:
    """The days the band rejects when ``counts`` are ingested day by day (rejected days stay out)."""
    lake: dict[dt.date, int] = {}
    rejected = []
    for day in sorted(counts):
        band = volume_band(lake, day, settings)
        if band.max_rows is not None and not band.min_rows <= counts[day] <= band.max_rows:
            rejected.append(day)
        else:
            lake[day] = counts[day]
    return rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--weeks", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--min-history", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    counts = landing_counts(args.path)
    base = get_settings()
    print(f"{args.path.name}: {len(counts)} days, {sum(counts.values()):,} rows")
    for weeks in args.weeks:
        for min_history in args.min_history:
            settings = base.model_copy(update={"volume_weeks": weeks, "volume_min_history": min_history})
            days = rejected_days(counts, settings)
            shown = ", ".join(f"{d} ({d:%a}, {counts[d]})" for d in days)
            print(
                f"median of same weekday, {weeks} weeks, enforce from {min_history}: {len(days)} rejected: {shown}"
            )


if __name__ == "__main__":
    main()
