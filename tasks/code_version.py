"""The version of the code that made a release, recorded with every ledger charge.

``git:<commit>`` when the ``tasks`` package is imported from a git checkout (``+dirty`` when tracked
files differ from that commit), else ``shoprec==<installed package version>``, else ``unknown``.
Cheap (two local ``git`` calls at most, no network); nothing runs at import time.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Final

PACKAGE: Final = "shoprec"
SOURCE_ROOT: Final = Path(__file__).resolve().parent.parent  # the folder holding tasks/


def _git(root: Path, *args: str) -> str | None:
    """``git -C root ARGS`` stdout, or None when git is missing or fails (not a checkout, say)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        result = subprocess.run(
            [git, "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(root: Path = SOURCE_ROOT) -> str:
    """``git:<commit>[+dirty]`` of the checkout at ``root`` if ``root`` is its top level, else the
    installed package's ``shoprec==<version>``, else ``unknown``."""
    head = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = head.splitlines() if head else []
    if len(lines) == 2 and Path(lines[0]).resolve() == root.resolve():
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
        return f"git:{lines[1]}" + ("+dirty" if dirty is None or dirty else "")
    try:
        return f"{PACKAGE}=={metadata.version(PACKAGE)}"
    except metadata.PackageNotFoundError:
        return "unknown"
