"""DAG integrity: every DAG file parses, carries the metadata operators rely on, and stays cheap to parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
EXPECTED_DAGS = {
    "ingest_events",
    "build_features",
    "train_recommender",
    "publish_recommendations",
    "privacy_audit",
    "train_offer_policy",
}
HEAVY_MODULES = ("torch", "feast", "mlflow", "great_expectations", "opacus", "transformers", "sklearn")


@pytest.fixture(scope="module")
def dag_bag(airflow_home: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_every_dag_file_imports_without_errors(dag_bag: Any) -> None:
    assert dag_bag.import_errors == {}


def test_the_pipeline_dags_exist(dag_bag: Any) -> None:
    assert set(dag_bag.dag_ids) >= EXPECTED_DAGS


def test_dags_have_docs_tags_static_start_and_retries(dag_bag: Any) -> None:
    problems = []
    for dag_id, dag in dag_bag.dags.items():
        if not (dag.doc_md or dag.description):
            problems.append(f"{dag_id}: no docstring")
        if not dag.tags:
            problems.append(f"{dag_id}: no tags")
        if dag.start_date is None or dag.start_date.tzinfo is None:
            problems.append(f"{dag_id}: start_date must be a static tz-aware date")
        for task in dag.tasks:
            if task.retries < 2:
                problems.append(f"{dag_id}.{task.task_id}: retries={task.retries} < 2")
    assert problems == []


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS_DIR.glob("*.py")))
def test_dag_file_imports_no_heavy_library_at_top_level(dag_file: str) -> None:
    code = (
        "import json, runpy, sys;"
        f"runpy.run_path({str(DAGS_DIR / dag_file)!r});"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
