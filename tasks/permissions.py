"""Owner-only files and folders: raw landing data, keys and state databases are 0600 in 0700 folders.

Raw user ids and invoice numbers exist only in ``landing/``; the pseudonymisation key, the privacy
ledger and the embedded state databases (Airflow's metadata, MLflow's store) are readable by whoever
can read their files.  The helpers here create those files and folders owner-only (and tighten ones
that already exist); :func:`restrict_umask` makes everything else a ShopRec command creates owner-only
too.  Lake, features, reports and models hold pseudonymised data and keep the process's umask when a
library writes them outside a ShopRec command.

Nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
OWNER_ONLY_UMASK: Final = 0o077


def restrict_umask() -> int:
    """Make every file and folder this process creates from now on owner-only; returns the old umask.

    Called at the entry points (the ``shoprec`` command line, :func:`tasks.orchestration.configure_airflow`)
    before anything is created.  Child processes (``airflow db migrate``, servers) inherit it.
    """
    return os.umask(OWNER_ONLY_UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700; an existing folder is tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Make ``path`` a 0600 file in a 0700 folder, creating it empty if it does not exist.

    For files a library creates later (SQLite opens an empty file as a new database, and gives its
    journal and WAL files the database file's mode).
    """
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    os.close(fd)
    path.chmod(PRIVATE_FILE_MODE)
    return path


def private_sqlite(url: str) -> None:
    """For a ``sqlite:///FILE`` URL: create FILE owner-only before SQLite does. Other URLs: nothing.

    Other URLs include MLflow's (``http://...``, ``databricks``) that are no SQLAlchemy URLs at all.
    """
    if not url.startswith("sqlite:"):
        return
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    private_file(Path(parsed.database))
