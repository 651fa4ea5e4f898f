"""The GPU task's Kubernetes pod, checked offline with ``airflow kubernetes generate-dag-yaml``.

No cluster and no service: Airflow renders the pod each task would get under the KubernetesExecutor
from the DAG file and the session's SQLite metadata DB.  The probe DAG's gpu task carries the
``pod_override`` documented in docs/production.md for ``train_recommender.train_model``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.production, pytest.mark.integration]

PROBE_DAGS = Path(__file__).resolve().parent / "dags"
PIPELINE_DAGS = Path(__file__).resolve().parents[2] / "dags"


def _render(dags: Path, dag_id: str, out: Path) -> dict[str, dict]:
    # The pods a KubernetesExecutor would start: the pipeline DAGs build a pod_override only there.
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__EXECUTOR": "KubernetesExecutor",
    }
    command = [str(Path(sys.executable).parent / "airflow"), "kubernetes", "generate-dag-yaml"]
    command += [dag_id, "--logical-date", "2026-01-02", "--output-path", str(out)]
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((out / "airflow_yaml_output").glob("*.yml"))
    return {path.name.split("_2026")[0]: yaml.safe_load(path.read_text()) for path in files}


@pytest.fixture(scope="module")
def pods(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return _render(PROBE_DAGS, "stack_probe", tmp_path_factory.mktemp("pods"))


@pytest.fixture(scope="module")
def training_pods(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return _render(PIPELINE_DAGS, "train_recommender", tmp_path_factory.mktemp("training_pods"))


def _limits(pod: dict) -> dict:
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    return dict((base.get("resources") or {}).get("limits") or {})


def test_gpu_task_pod_requests_one_nvidia_gpu(pods: dict[str, dict]) -> None:
    assert _limits(pods["stack_probe_report_gpu_worker"]) == {"nvidia.com/gpu": "1"}


def test_gpu_task_pod_runs_the_trainer_image(pods: dict[str, dict]) -> None:
    (base,) = pods["stack_probe_report_gpu_worker"]["spec"]["containers"]
    assert base["image"] == "shoprec-trainer:latest"


def test_default_queue_task_pod_requests_no_gpu(pods: dict[str, dict]) -> None:
    assert "nvidia.com/gpu" not in _limits(pods["stack_probe_report_default_worker"])


def test_train_model_pod_requests_one_nvidia_gpu_in_the_trainer_image(
    training_pods: dict[str, dict],
) -> None:
    pod = training_pods["train_recommender_train_model"]
    assert _limits(pod) == {"nvidia.com/gpu": "1"}
    (base,) = pod["spec"]["containers"]
    assert base["image"] == "shoprec-trainer:latest"


def test_other_training_tasks_request_no_gpu(training_pods: dict[str, dict]) -> None:
    assert "nvidia.com/gpu" not in _limits(training_pods["train_recommender_register_and_gate"])
