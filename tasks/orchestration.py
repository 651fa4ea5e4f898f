"""Run the ShopRec DAGs through real Airflow in this process (``dag.test()``), for the demo and tests.

Airflow reads its configuration from the environment when it is first imported, so
:func:`configure_airflow` must run before anything imports ``airflow``.  Nothing here runs at import.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import Settings
from tasks.permissions import private_dir, private_sqlite, restrict_umask

DAG_IDS = (
    "ingest_events",
    "build_features",
    "train_recommender",
    "publish_recommendations",
    "privacy_audit",
)


def airflow_environment(settings: Settings) -> dict[str, str]:
    """The ``AIRFLOW__*`` variables of the embedded profile (SQLite metadata under SHOPREC_HOME)."""
    env = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "SHOPREC_HOME": str(settings.home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{settings.airflow_home / 'airflow.db'}"
    return env


def configure_airflow(settings: Settings) -> None:
    """Point this process's Airflow at the settings' home and create its metadata database.

    Sets this process's umask to owner-only first (:func:`tasks.permissions.restrict_umask`): the
    Airflow home (0700), its SQLite database (0600) and every log Airflow writes are the owner's alone.
    """
    if "airflow" in sys.modules:
        current = os.environ.get("AIRFLOW_HOME")
        if current and Path(current).resolve() != settings.airflow_home:
            raise RuntimeError(
                f"Airflow was already imported with AIRFLOW_HOME={current}; "
                f"configure_airflow must run before the first airflow import"
            )
    restrict_umask()
    private_dir(settings.airflow_home)
    os.environ.update(airflow_environment(settings))
    private_sqlite(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    migrate_metadata_db()


def migrate_metadata_db() -> None:
    """``airflow db migrate`` in a child process (idempotent; creates the SQLite file on first use)."""
    airflow_bin = Path(sys.executable).with_name("airflow")
    command = (
        [str(airflow_bin), "db", "migrate"]
        if airflow_bin.exists()
        else [
            sys.executable,
            "-m",
            "airflow",
            "db",
            "migrate",
        ]
    )
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


@dataclass
class DagRunResult:
    """What one ``dag.test()`` run did: its state and each task's state."""

    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.state == "success"


def load_dags(settings: Settings) -> dict[str, Any]:
    """Parse the DAG folder; raise if any file fails to import."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(settings.dags_dir))
    if bag.import_errors:
        details = "\n".join(f"{path}: {err}" for path, err in bag.import_errors.items())
        raise RuntimeError(f"DAG import errors:\n{details}")
    return dict(bag.dags)


def run_dag(
    dag: Any,
    *,
    logical_date: dt.datetime | None = None,
    run_conf: dict[str, Any] | None = None,
) -> DagRunResult:
    """Run one DAG run with ``dag.test()`` and collect the task states."""
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"run_conf": run_conf}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    dag_run = dag.test(**kwargs)
    seconds = time.perf_counter() - started
    states = {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
        for ti in dag_run.get_task_instances()
    }
    return DagRunResult(
        dag_id=dag.dag_id,
        run_id=dag_run.run_id,
        state=str(dag_run.state),
        task_states=states,
        seconds=seconds,
    )


def interval_end_for_day(day: dt.date) -> dt.datetime:
    """``logical_date`` to give ``dag.test()`` of a daily data-interval DAG so it covers ``day``.

    For a data-interval timetable, a manual run at ``run_after`` covers the last complete interval
    before it, so the day D is processed by the run whose logical date is D + 1 day, 00:00 UTC.
    """
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
