"""The lowest layer's two helpers: atomic writes, and the days a DAG run covers.

**Atomic writes.** Every file ShopRec hands to another task (lake partitions, feature snapshots,
models, reports, ledger anchors) is written to a temporary file in the same folder, flushed and
fsync'd, then renamed over the target (``os.replace``, atomic on POSIX), and the folder is fsync'd so
the rename survives a crash. A reader sees the old file or the new one, never half of one; a failed
write leaves the old file and no temporary behind. ``private=True`` makes the file 0600 in a 0700
folder whatever the umask (raw landing data, keys, anchors); otherwise the file gets the process's
umask, like any file the process creates. :func:`replace_dir` does the same for a folder of files.

**Days of a run.** :func:`run_days` is the one rule by which a run finds the data days it covers: the
run conf, else the triggering asset events, else the data interval.

Nothing here runs at import time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.contracts import days_in_interval
from tasks.permissions import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, private_dir

_SHARED_FILE_MODE: Final = 0o666  # before the umask, as open() creates files


# --- atomic writes -------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _staging_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], *, private: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it and rename it onto ``path``."""
    path = Path(path)
    if private:
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(path)
    fd = os.open(
        staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE if private else _SHARED_FILE_MODE
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes, *, private: bool = False) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), private=private)


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(
    path: Path, data: Any, *, private: bool = False, indent: int | None = 2, sort_keys: bool = True
) -> Path:
    """``data`` as JSON text with a final newline."""
    return atomic_write_text(
        path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n", private=private
    )


def atomic_write_parquet(path: Path, table: pa.Table, *, private: bool = False, **options: Any) -> Path:
    """``table`` as a parquet file; ``options`` go to :func:`pyarrow.parquet.write_table`."""
    return atomic_write(path, lambda handle: pq.write_table(table, handle, **options), private=private)


def replace_dir(target: Path, write: Callable[[Path], Any], *, private: bool = False) -> Path:
    """Fill a temporary folder beside ``target`` with ``write(folder)``, then put it in ``target``'s place.

    Every file written is fsync'd before the rename; an existing ``target`` is moved aside first and
    removed after the new folder is in place (two renames: a reader may briefly find no folder, never
    a half-written one). On failure the temporary folder is removed and ``target`` is unchanged.
    ``private=True``: the folder is 0700 and its files 0600.
    """
    target = Path(target)
    if private:
        private_dir(target.parent)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(mode=PRIVATE_DIR_MODE if private else 0o777)
    try:
        write(staging)
        for file in (p for p in staging.rglob("*") if p.is_file()):
            if private:
                file.chmod(PRIVATE_FILE_MODE)
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        retired = None
        if target.exists():
            retired = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
            os.replace(target, retired)
        os.replace(staging, target)
        _fsync_dir(target.parent)
        if retired is not None:
            shutil.rmtree(retired)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


# --- the days of a run ---------------------------------------------------------------------------
def asset_event_extras(triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> list[dict[str, Any]]:
    """The ``extra`` of every triggering asset event of a run (Airflow's ``triggering_asset_events``)."""
    return [
        dict(event.extra or {}) for events in (triggering_asset_events or {}).values() for event in events
    ]


def run_days(
    conf: Mapping[str, Any] | None,
    asset_extras: Iterable[Mapping[str, Any]],
    interval: tuple[dt.datetime | None, dt.datetime | None] = (None, None),
) -> list[dt.date]:
    """The data days a run covers, sorted, from the first of these that names any:

    1. the run conf ``{"days": ["YYYY-MM-DD", ...]}`` (demos, backfills, ``dag.test(run_conf=...)``);
    2. the triggering asset events' extra, ``"partitions"`` or ``"days"`` (the accepted days: an
       event that names the key with no day gives none, and no fallback to 3.);
    3. the run's data interval (``[start, end)`` calendar days, UTC), when it has one.

    Empty when none applies (a manual run without conf: the caller decides, e.g. the latest data).
    """
    raw: list[str] = [str(d) for d in (conf or {}).get("days") or []]
    told = bool(raw)
    if not raw:
        for extra in asset_extras:
            told = told or "partitions" in extra or "days" in extra
            raw.extend(str(d) for d in (extra.get("partitions") or extra.get("days") or []))
    days = {dt.date.fromisoformat(d) for d in raw}
    start, end = interval
    if not told and start is not None and end is not None:
        days = set(days_in_interval(start, end))
    return sorted(days)
