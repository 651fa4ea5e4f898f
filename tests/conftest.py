"""Shared pytest fixtures: isolated ShopRec state per test and one throwaway Airflow per session.

Airflow reads ``AIRFLOW_HOME`` and its configuration the first time it is imported, so
:func:`pytest_configure` points it at a temporary folder before any test module (or DAG file) is
collected.  The metadata database there is created lazily by the session fixture ``airflow_home``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_settings import only_shoprec_env

from tasks.config import Settings, get_settings

REPO_ROOT = Path(__file__).resolve().parent.parent

_AIRFLOW_ENV_KEY = pytest.StashKey[dict[str, str | None]]()
_AIRFLOW_DIR_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="shoprec-airflow-"))
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    config.stash[_AIRFLOW_ENV_KEY] = {key: os.environ.get(key) for key in env}
    config.stash[_AIRFLOW_DIR_KEY] = home
    os.environ.update(env)


def pytest_unconfigure(config: pytest.Config) -> None:
    for key, value in config.stash.get(_AIRFLOW_ENV_KEY, {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    home = config.stash.get(_AIRFLOW_DIR_KEY, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home(pytestconfig: pytest.Config) -> Path:
    """AIRFLOW_HOME of this session, with a migrated SQLite metadata DB and ``dags/`` as DAG folder."""
    home = pytestconfig.stash[_AIRFLOW_DIR_KEY]
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return home


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of a real S3 protocol server (moto) on 127.0.0.1, for the session."""
    from helpers_s3 import moto_s3_server  # moto and s3fs load only in sessions that need them

    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def shoprec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose SHOPREC_HOME is a fresh tmp folder; other SHOPREC_* variables are cleared.

    AIRFLOW_HOME stays the session's temporary Airflow home (see :func:`pytest_configure`): Airflow
    cannot be re-pointed once imported.  Tasks run by ``dag.test()`` read the same SHOPREC_HOME.
    """
    home = tmp_path / "shoprec"
    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(home)})
    settings = get_settings()
    assert settings.home == home.resolve()
    return settings
