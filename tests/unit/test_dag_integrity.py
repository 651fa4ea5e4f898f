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


FEATURE_REPO = REPO / "feature_repo"
_PROBE = """
import json, os, runpy, sys
for path in sys.argv[1:]:
    runpy.run_path(path)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {modules!r})))
"""


def _files_under(*folders: Path) -> set[Path]:
    return {path for folder in folders for path in folder.rglob("*")}


def _import_in_fresh_process(paths: list[Path], tmp_path: Path) -> tuple[list[str], set[Path]]:
    """Import ``paths`` in a child process whose SHOPREC_HOME and working directory are empty folders;
    return the top-level heavy modules it loaded and every file or folder the imports created (in those
    folders and in the repository's dags/, feature_repo/ and tasks/)."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    watched = (tmp_path, DAGS_DIR, FEATURE_REPO, REPO / "tasks")
    before = _files_under(*watched)
    env = {
        **os.environ,
        "SHOPREC_HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    code = _PROBE.format(modules=(*HEAVY_MODULES, "kubernetes"))
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, env=env, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    return sorted({m.split(".")[0] for m in loaded}), _files_under(*watched) - before


@pytest.fixture(scope="module")
def dag_file_imports(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[list[str], set[Path]]]:
    return {
        path.name: _import_in_fresh_process([path], tmp_path_factory.mktemp(path.stem))
        for path in sorted(DAGS_DIR.glob("*.py"))
    }


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS_DIR.glob("*.py")))
def test_dag_file_imports_no_heavy_library_at_top_level(
    dag_file: str, dag_file_imports: dict[str, tuple[list[str], set[Path]]]
) -> None:
    loaded, _ = dag_file_imports[dag_file]
    assert [m for m in loaded if m in HEAVY_MODULES] == []


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS_DIR.glob("*.py")))
def test_dag_file_builds_no_kubernetes_pod_outside_the_kubernetes_executor(
    dag_file: str, dag_file_imports: dict[str, tuple[list[str], set[Path]]]
) -> None:
    loaded, _ = dag_file_imports[dag_file]
    assert "kubernetes" not in loaded


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS_DIR.glob("*.py")))
def test_dag_file_import_creates_no_file_or_folder(
    dag_file: str, dag_file_imports: dict[str, tuple[list[str], set[Path]]]
) -> None:
    _, created = dag_file_imports[dag_file]
    assert created == set()


_COUNT_SETTINGS = """
import json, runpy, sys
import tasks.config
built = []
init = tasks.config.Settings.__init__
def counting_init(self, *args, **kwargs):
    built.append(1)
    init(self, *args, **kwargs)
tasks.config.Settings.__init__ = counting_init
for path in sys.argv[1:]:
    runpy.run_path(path)
print(json.dumps(len(built)))
"""


def test_parsing_the_dag_files_builds_no_settings_and_survives_an_invalid_one(
    airflow_home: Path, tmp_path: Path
) -> None:
    """A DAG file reads at parse time only the fields it needs (tasks.config.one_setting): it builds no
    Settings, so a bad SHOPREC_TRAIN_STEPS (a task-time setting) does not break every DAG's import."""
    env = {
        **os.environ,
        "SHOPREC_HOME": str(tmp_path / "home"),
        "SHOPREC_TRAIN_STEPS": "not-a-number",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    paths = sorted(map(str, DAGS_DIR.glob("*.py")))
    result = subprocess.run(
        [sys.executable, "-c", _COUNT_SETTINGS, *paths], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == 0
    probe = subprocess.run(  # the probe can fail: the same process does count a Settings built
        [
            sys.executable,
            "-c",
            _COUNT_SETTINGS.replace("print(", "tasks.config.Settings(train_steps=1)\nprint("),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == 1


def test_train_recommender_pins_its_data_on_the_default_queue_before_the_gpu_task(dag_bag: Any) -> None:
    """pin_training_data (lake and Feast: a default worker) hands train_model (queue gpu) only its
    output; registration follows the training task."""
    from airflow.configuration import conf

    dag = dag_bag.dags["train_recommender"]  # the parsed DAG: no metadata-DB read (structure only)
    pin, train = dag.get_task("pin_training_data"), dag.get_task("train_model")
    assert (pin.queue, train.queue) == (conf.get("operators", "default_queue"), "gpu")
    assert pin.upstream_task_ids == {"check_training_due"}
    assert train.upstream_task_ids == {"pin_training_data"}
    assert dag.get_task("register_and_gate").upstream_task_ids == {"train_model"}


def test_no_task_carries_a_pod_override_outside_the_kubernetes_executor(dag_bag: Any) -> None:
    assert [
        f"{dag_id}.{task.task_id}"
        for dag_id, dag in dag_bag.dags.items()
        for task in dag.tasks
        if (task.executor_config or {}).get("pod_override") is not None
    ] == []


def test_feature_repo_import_creates_no_file_or_folder(tmp_path: Path) -> None:
    """The Feast CLI imports these files: on a fresh home they create nothing (no registry, no folder)."""
    _, created = _import_in_fresh_process(sorted(FEATURE_REPO.glob("*.py")), tmp_path)
    assert created == set()


@pytest.mark.parametrize(
    ("executors", "expected"),
    [
        ("KubernetesExecutor", True),
        ("CeleryExecutor, KubernetesExecutor", True),
        ("airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor", True),
        ("k8s:airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor", True),
        ("CeleryExecutor", False),
        ("LocalExecutor", False),
        ("", False),
    ],
)
def test_kubernetes_executor_is_recognised_in_every_spelling(executors: str, expected: bool) -> None:
    from tasks.assets import kubernetes_executor_configured

    assert kubernetes_executor_configured(executors) is expected


def test_gpu_task_gets_the_trainer_pod_under_the_kubernetes_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.assets import gpu_executor_config

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor,KubernetesExecutor")
    monkeypatch.setenv("SHOPREC_TRAINER_IMAGE", "registry.example/shoprec-trainer:7")
    (container,) = gpu_executor_config()["pod_override"].spec.containers
    assert (container.name, container.image, container.resources.limits) == (
        "base",
        "registry.example/shoprec-trainer:7",
        {"nvidia.com/gpu": "1"},
    )
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    assert gpu_executor_config() == {}
