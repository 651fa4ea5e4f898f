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
