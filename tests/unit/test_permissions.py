"""tasks.permissions: owner-only files and folders."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tasks.permissions import private_dir, private_sqlite


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_tightens_an_existing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    private_dir(folder)
    assert _mode(folder) == 0o700


def test_private_sqlite_creates_the_database_file_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "privacy" / "ledger.db"
    private_sqlite(f"sqlite:///{database}")
    assert (_mode(database), _mode(database.parent)) == (0o600, 0o700)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000",
        "databricks",
        "postgresql+psycopg2://u@h/db",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_private_sqlite_leaves_other_urls_alone(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    private_sqlite(url)
    assert list(tmp_path.iterdir()) == []
