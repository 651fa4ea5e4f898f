"""tasks.io: atomic writes (all or nothing, no temporary left behind, owner-only on request) and the
one rule for the days a run covers."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.io import (
    asset_event_extras,
    atomic_write,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    replace_dir,
    run_days,
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    atomic_write_text(path, "old")

    def half_then_fail(handle: object) -> None:
        handle.write(b"half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_private_write_is_owner_only_whatever_the_umask(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "keys" / "k.txt"
    atomic_write_text(path, "secret", private=True)
    assert (_mode(path), _mode(path.parent)) == (0o600, 0o700)


def test_private_write_replaces_an_open_file_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    path.chmod(0o644)
    atomic_write_text(path, "new", private=True)
    assert (path.read_text(), _mode(path)) == ("new", 0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_ordinary_write_follows_the_umask(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "lake.txt"
    atomic_write_text(path, "rows")
    assert _mode(path) == 0o644


def test_json_and_parquet_round_trip(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2], "b": 1}
    table = pa.table({"item_id": ["i1", "i2"], "n": [3, 4]})
    atomic_write_parquet(tmp_path / "t.parquet", table, compression="zstd")
    assert pq.read_table(tmp_path / "t.parquet").equals(table)


def test_replace_dir_swaps_the_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "date=2024-01-01"
    replace_dir(target, lambda d: (d / "old.txt").write_text("old"))
    replace_dir(target, lambda d: (d / "new.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["date=2024-01-01"]


def test_replace_dir_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "report"
    replace_dir(target, lambda d: (d / "r.json").write_text("{}"))

    def fail(folder: Path) -> None:
        (folder / "r.json").write_text("{half")
        raise ValueError("render failed")

    with pytest.raises(ValueError, match="render failed"):
        replace_dir(target, fail)
    assert (target / "r.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_private_replace_dir_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "landing" / "date=2024-01-01"
    replace_dir(target, lambda d: (d / "events.parquet").write_bytes(b"x"), private=True)
    assert (_mode(target), _mode(target / "events.parquet")) == (0o700, 0o600)


D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
INTERVAL = (dt.datetime(2024, 1, 3, tzinfo=dt.UTC), dt.datetime(2024, 1, 4, tzinfo=dt.UTC))


def test_run_days_prefers_the_run_conf() -> None:
    assert run_days({"days": ["2024-01-02", "2024-01-01"]}, [{"partitions": ["2024-01-03"]}], INTERVAL) == [
        D1,
        D2,
    ]


def test_run_days_takes_the_asset_events_partitions_or_days() -> None:
    extras = [{"partitions": ["2024-01-02"]}, {"days": ["2024-01-01", "2024-01-02"]}]
    assert run_days(None, extras, INTERVAL) == [D1, D2]


def test_run_days_of_events_that_name_no_day_is_empty_without_interval_fallback() -> None:
    assert run_days({}, [{"days": [], "rejected_days": {"2024-01-03": "volume"}}], INTERVAL) == []


def test_run_days_falls_back_to_the_data_interval_then_to_nothing() -> None:
    assert run_days({}, [{"version": "3"}], INTERVAL) == [D3]
    assert run_days(None, []) == []


def test_asset_event_extras_flattens_every_triggering_event() -> None:
    events = {
        "features": [SimpleNamespace(extra={"partitions": ["2024-01-01"]}), SimpleNamespace(extra=None)],
        "events_clean": [SimpleNamespace(extra={"days": []})],
    }
    assert asset_event_extras(events) == [{"partitions": ["2024-01-01"]}, {}, {"days": []}]
    assert asset_event_extras(None) == []
