"""publish_recommendations before any model passed the gate: the run skips, publishes nothing, fails nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import Settings

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"


def test_publish_without_a_champion_skips_and_writes_nothing(
    shoprec_home: Settings, airflow_home: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tasks.orchestration import run_dag

    shoprec_home.ensure_dirs()
    bag = DagBag(dag_folder=str(DAGS))
    result = run_dag(bag.get_dag("publish_recommendations"), run_conf={"days": ["2026-09-10"]})
    assert result.state == "success"
    assert result.task_states == {"score_and_publish": "skipped"}
    assert list((shoprec_home.home / "recommendations").glob("publish_id=*")) == []


def test_recommend_before_any_promotion_says_so_in_one_line(shoprec_home: Settings) -> None:
    """A consumer asking before the gate promoted anything gets one line and exit 1, no traceback."""
    import subprocess
    import sys

    from tasks.feast_store import apply_definitions

    shoprec_home.ensure_dirs()
    apply_definitions(shoprec_home)  # the feature store exists; no recommendations service yet
    done = subprocess.run(
        [str(Path(sys.executable).parent / "shoprec"), "recommend", "u_" + "0" * 32],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "shoprec: error: nothing is published yet: feature service recommendations_v1 does not exist, so no "
        "model has been promoted (the gate kept no champion; its decision is on the model version in MLflow)"
    ]
    assert "Traceback" not in done.stdout + done.stderr
