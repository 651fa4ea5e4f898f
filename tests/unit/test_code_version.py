"""code_version: the git commit (with a dirty flag) or the package version recorded with every charge."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from tasks.code_version import SOURCE_ROOT, code_version


def _git(root: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def test_a_clean_checkout_gives_its_commit_and_a_changed_one_is_dirty(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    assert code_version(tmp_path) == f"git:{commit}"
    (tmp_path / "untracked.txt").write_text("ignored: not part of the code")
    assert code_version(tmp_path) == f"git:{commit}"
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == f"git:{commit}+dirty"


def test_outside_a_checkout_the_package_version_is_used(tmp_path: Path) -> None:
    assert code_version(tmp_path) == f"shoprec=={metadata.version('shoprec')}"


def test_a_folder_inside_someone_elses_checkout_is_not_taken_for_ours(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "site-packages").mkdir()
    assert code_version(tmp_path / "site-packages").startswith("shoprec==")


def test_this_source_tree_reports_its_own_commit() -> None:
    assert code_version().startswith(f"git:{_git(SOURCE_ROOT, 'rev-parse', 'HEAD')}")
