"""Tiny landing batches in the data contract (tasks/contracts.py), for ingest tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.contracts import EVENT_TYPES, EVENTS_SCHEMA, ITEMS_SCHEMA, partition_dir

ITEM_IDS = tuple(f"item-{i:03d}" for i in range(10))


def raw_user(k: int) -> str:
    """A raw user id distinctive enough to search for in files and logs."""
    return f"RAWUSER-{k:05d}-X"


def good_events(day: dt.date, n: int = 40, *, users: int = 8, prefix: str = "") -> list[dict[str, Any]]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    rows = []
    for i in range(n):
        event_type = EVENT_TYPES[i % len(EVENT_TYPES)]
        rows.append(
            {
                "event_id": f"{prefix}{day.isoformat()}-e{i:05d}",
                "user_id": raw_user(i % users),
                "item_id": ITEM_IDS[i % len(ITEM_IDS)],
                "event_type": event_type,
                "event_timestamp": start + dt.timedelta(minutes=7 * i % (24 * 60), seconds=i),
                "quantity": 1 + i % 3,
                "unit_price": 2.5 + i % 5 if event_type == "purchase" else None,
                "session_id": f"s{i // 5}",
                "country": "United Kingdom",
            }
        )
    return rows


def catalog_items(first_seen: dt.date, item_ids: tuple[str, ...] = ITEM_IDS) -> list[dict[str, Any]]:
    seen = dt.datetime.combine(first_seen, dt.time(), dt.UTC)
    return [
        {"item_id": item, "title": f"Product {item}", "category": "home", "price": 3.0, "first_seen": seen}
        for item in item_ids
    ]


def write_events(
    landing: Path, day: dt.date, rows: list[dict[str, Any]], name: str = "events.parquet"
) -> Path:
    folder = partition_dir(landing, day)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    # Landing data may break the contract (nulls included): write it with every field nullable.
    schema = pa.schema([field.with_nullable(True) for field in EVENTS_SCHEMA])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_items(landing: Path, day: dt.date, rows: list[dict[str, Any]], name: str = "items.parquet") -> Path:
    folder = partition_dir(landing, day)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA), path)
    return path


def write_good_day(landing: Path, day: dt.date, n: int = 40) -> list[dict[str, Any]]:
    """A clean day: catalog items plus ``n`` valid events; returns the event rows."""
    write_items(landing, day, catalog_items(day))
    rows = good_events(day, n)
    write_events(landing, day, rows)
    return rows
