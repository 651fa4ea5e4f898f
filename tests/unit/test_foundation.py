"""The package, its settings and the data contract behave as the Foundation issue asks."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tasks
from tasks.config import Profile, Settings
from tasks.contracts import (
    EVENTS_SCHEMA,
    ContractError,
    days_in_interval,
    parse_partition,
    personal_data_columns,
    require_columns,
)

REPO = Path(__file__).resolve().parents[2]


def test_import_tasks_resolves_to_this_project() -> None:
    assert Path(tasks.__file__).resolve().parent == REPO / "tasks"


def test_importing_tasks_modules_creates_nothing_and_sets_no_tracking_uri(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = (
        "import tasks, tasks.config, tasks.contracts, tasks.cli, tasks.demo, tasks.orchestration, os;"
        "print(os.environ.get('MLFLOW_TRACKING_URI', ''))"
    )
    env = {**os.environ, "SHOPREC_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
    assert not home.exists()
    assert list(tmp_path.iterdir()) == []


def test_settings_read_shoprec_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPREC_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SHOPREC_MAX_BAD_ROW_SHARE", "0.1")
    settings = Settings()
    assert settings.home == (tmp_path / "state").resolve()
    assert settings.max_bad_row_share == pytest.approx(0.1)
    assert settings.resolved_ledger_url == f"sqlite:///{tmp_path / 'state' / 'privacy' / 'ledger.db'}"
    assert settings.resolved_mlflow_tracking_uri.startswith("sqlite:///")
    assert settings.events_dir == (tmp_path / "state" / "lake" / "events").resolve()


def test_production_profile_moves_every_store_to_services(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        profile=Profile.PRODUCTION,
        postgres_url="postgresql+psycopg2://postgres@127.0.0.1:5432/shoprec",
        mlflow_server_url="http://127.0.0.1:5000",
    )
    assert settings.resolved_ledger_url.startswith("postgresql")
    assert settings.resolved_feast_registry_url.startswith("postgresql")
    assert settings.resolved_mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        settings.seed = 3  # type: ignore[misc]


def test_ensure_dirs_creates_state_below_home_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h")
    settings.ensure_dirs()
    assert settings.landing_dir.is_dir()
    assert settings.secrets_dir.stat().st_mode & 0o777 == 0o700
    assert all(p.resolve().is_relative_to(tmp_path) for p in (tmp_path / "h").rglob("*"))


def test_personal_data_columns_are_refused() -> None:
    cols = [*EVENTS_SCHEMA.names, "email", "customer_name", "phone_number", "shipping_address"]
    assert set(personal_data_columns(cols)) == {"email", "customer_name", "phone_number", "shipping_address"}
    with pytest.raises(ContractError, match="personal-data columns are refused: email"):
        require_columns(cols, EVENTS_SCHEMA, "landing/date=2026-01-01/events.csv")


def test_contract_columns_are_not_mistaken_for_personal_data() -> None:
    assert personal_data_columns(list(EVENTS_SCHEMA.names)) == ()
    assert personal_data_columns(["item_id", "title", "category", "price", "first_seen"]) == ()


def test_missing_columns_are_named() -> None:
    with pytest.raises(ContractError, match="missing columns: event_type, quantity"):
        require_columns(
            [c for c in EVENTS_SCHEMA.names if c not in {"event_type", "quantity"}], EVENTS_SCHEMA, "x"
        )


def test_partition_names_round_trip_and_reject_garbage() -> None:
    assert parse_partition("date=2026-02-28") == dt.date(2026, 2, 28)
    assert parse_partition("date=2026-02-30") is None
    assert parse_partition("2026-02-28") is None


def test_daily_interval_covers_exactly_one_day() -> None:
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert days_in_interval(start, start + dt.timedelta(days=1)) == [dt.date(2026, 3, 1)]
    assert days_in_interval(start, start) == []
    assert len(days_in_interval(start, start + dt.timedelta(days=7))) == 7


def test_no_machine_specific_paths_in_tracked_files() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix in {".parquet", ".png", ".db"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        for needle in ("/work/", "/root/", "/home/", "/tmp/ciclone"):
            if needle in text and name != "tests/unit/test_foundation.py":
                offenders.append(f"{name}: {needle}")
    assert offenders == []


def test_importing_the_numpy_layers_does_not_load_torch() -> None:
    """Evaluation, the baselines, the dataset and the catalog are numpy and pandas only: importing them
    (what a metrics report or a benchmark harness does) must not pay for torch."""
    code = (
        "import sys, tasks.evaluation, tasks.baselines, tasks.dataset, tasks.catalog;"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
