"""Attack: read raw ids, keys or state databases as another local user (group/other permission bits).

Each test runs a real step (land, ingest, open the ledger, migrate Airflow's database, open MLflow)
under a permissive umask (022, the usual default) and asserts that what it created is owner-only:
files 0600, folders 0700.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections.abc import Generator, Iterable
from pathlib import Path

import pytest
from helpers_landing import write_good_day
from typer.testing import CliRunner

from tasks.config import Settings
from tasks.ingest import ingest_day, update_catalog
from tasks.sources.online_retail import load_online_retail
from tasks.sources.synthetic import SyntheticConfig, generate

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE = REPO_ROOT / "tests" / "data" / "online_retail_sample.parquet"
DAY = dt.date(2024, 3, 5)


@pytest.fixture(autouse=True)
def permissive_umask() -> Generator[None]:
    """Run each test under umask 022 (files 0644, folders 0755 unless the code says otherwise)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _readable_by_others(paths: Iterable[Path]) -> list[str]:
    """``path mode`` for every path with a group or other permission bit set."""
    return [
        f"{path} {stat.S_IMODE(path.stat().st_mode):o}"
        for path in paths
        if stat.S_IMODE(path.stat().st_mode) & 0o077
    ]


def _tree(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def test_landing_data_of_every_source_is_owner_only(shoprec_home: Settings) -> None:
    landing = shoprec_home.landing_dir
    generate(SyntheticConfig(n_users=20, n_items=10, days=2, seed=1), landing)
    load_online_retail(SAMPLE, landing, start=dt.date(2009, 12, 1), end=dt.date(2009, 12, 2))
    tree = _tree(landing)
    assert sum(p.is_file() for p in tree) >= 5  # events, items, the Online Retail report
    assert (landing / "_online_retail_report.json") in tree
    assert _readable_by_others(tree) == []


def test_ingest_creates_the_key_owner_only(shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=20)
    update_catalog(shoprec_home, DAY)
    ingest_day(shoprec_home, DAY, run_id="r")
    key_file = shoprec_home.secrets_dir / "pseudonym.key"
    assert key_file.is_file()
    assert _readable_by_others(_tree(shoprec_home.secrets_dir)) == []


def test_the_ledger_database_is_owner_only(shoprec_home: Settings) -> None:
    from tasks.privacy.ledger_key import open_ledger

    ledger = open_ledger(shoprec_home)  # the ledger and its key file, as the pipeline creates them
    ledger.ensure_budget("events", 10.0, 1e-5, 365)
    ledger.close()
    database = shoprec_home.privacy_dir / "ledger.db"
    assert database.stat().st_size > 0
    assert _readable_by_others(_tree(shoprec_home.privacy_dir)) == []


def test_the_embedded_mlflow_store_is_owner_only(shoprec_home: Settings) -> None:
    from tasks.registry import client

    client(shoprec_home).search_experiments()
    assert (shoprec_home.mlflow_dir / "mlflow.db").stat().st_size > 0
    assert _readable_by_others([shoprec_home.mlflow_dir, shoprec_home.mlflow_dir / "mlflow.db"]) == []


def test_airflows_home_and_metadata_database_are_owner_only(tmp_path: Path) -> None:
    """configure_airflow in a fresh process (Airflow reads its configuration once per process)."""
    home = tmp_path / "shoprec"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SHOPREC_"))}
    env.update(SHOPREC_HOME=str(home), PYTHONPATH=str(REPO_ROOT))
    script = (
        "from tasks.config import get_settings; from tasks.orchestration import configure_airflow; "
        "configure_airflow(get_settings())"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO_ROOT, timeout=300)
    database = home / "airflow" / "airflow.db"
    assert database.stat().st_size > 0  # migrated, not just created
    assert _readable_by_others(_tree(home / "airflow")) == []


def test_the_shoprec_command_makes_everything_it_creates_owner_only(shoprec_home: Settings) -> None:
    from tasks.cli import app

    result = CliRunner().invoke(app, ["generate", "--users", "10", "--items", "5", "--days", "1"])
    assert result.exit_code == 0, result.output
    current = os.umask(0o022)  # read the umask the command left in this process
    assert current == 0o077
    probe = shoprec_home.home / "probe"
    os.umask(current)
    probe.write_text("x")  # any file a command writes, e.g. a report
    assert _readable_by_others([probe]) == []
