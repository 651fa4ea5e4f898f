"""Search a folder tree for raw ids (user ids, invoice numbers) that must never leave the landing zone."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Settings
from tasks.pseudonymize import load_key, pseudonymize_source_id


def _parquet_strings(path: Path) -> set[str]:
    """Every string value of a parquet file (its pages may be compressed, hiding raw bytes)."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError):
        return set()
    values: set[str] = set()
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values.update(v for v in column.to_pylist() if v is not None)
    return values


def find_raw_ids(root: Path, raw_ids: set[str]) -> list[Path]:
    """Files below ``root`` that contain any of ``raw_ids``, sorted.

    Every regular file is searched as bytes (UTF-8 needles: logs, JSON, SQLite, HTML alike); parquet
    files are also decoded and their string values searched, since compressed pages hide raw bytes.
    """
    needles = {raw for raw in raw_ids if raw}
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if _contains_any(path, needles):
            hits.append(path)
    return hits


def _contains_any(path: Path, needles: set[str]) -> bool:
    data = path.read_bytes()
    if any(needle.encode("utf-8") in data for needle in needles):
        return True
    if path.suffix != ".parquet":
        return False
    return any(needle in value for value in _parquet_strings(path) for needle in needles)


def lake_event_ids(settings: Settings, raw_event_ids: Iterable[str]) -> set[str]:
    """The event ids the lake holds for landing ``raw_event_ids``: keyed with the lake's key at ingest."""
    key = load_key(settings)
    return {pseudonymize_source_id(raw, key, "event_id") for raw in raw_event_ids}
