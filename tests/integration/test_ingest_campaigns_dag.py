"""ingest_campaigns through real Airflow (``dag.test()``) and GX; train_offer_policy's first task reads
what it wrote (the window from the run conf)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.campaigns import simulator
from tasks.campaigns.contracts import exposures_lake_dir
from tasks.campaigns.pipeline import validate_log, window_end
from tasks.config import Settings
from tasks.contracts import partition_dir
from tasks.sources.synthetic import SyntheticConfig

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "ingest_campaigns.py"
DAY = dt.date(2026, 10, 1)


@pytest.fixture(scope="module")
def ingest_dag(airflow_home: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("ingest_campaigns")


def land(settings: Settings, day: dt.date, n: int, bad: int = 0) -> None:
    population = simulator.build_population(np.random.default_rng(3), shop=SyntheticConfig(n_users=200))
    rng = np.random.default_rng(4)
    decisions = simulator.draw_decisions(population, simulator.uniform(population), n, rng)
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    frame = simulator.exposures_frame(
        population, decisions, policy_name="uniform", policy_version="1", start=start, rng=rng
    )
    frame.loc[: bad - 1, "propensity"] = 0.0
    folder = partition_dir(settings.landing_dir, day)
    folder.mkdir(parents=True, exist_ok=True)
    population.offers_frame().to_parquet(folder / "offers.parquet", index=False)
    frame.to_parquet(folder / "exposures.parquet", index=False)


def test_a_landed_day_is_ingested_and_the_offer_dag_window_reads_it(
    ingest_dag: Any, shoprec_home: Settings
) -> None:
    land(shoprec_home, DAY, 300, bad=3)
    run = ingest_dag.test(run_conf={"days": [DAY.isoformat()]})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert states == {"ingest_campaign_logs": "success", "report_rejected_days": "success"}
    assert (partition_dir(exposures_lake_dir(shoprec_home), DAY) / "part-0.parquet").is_file()
    end = window_end({"days": [DAY.isoformat()]}, [], None)
    assert end == dt.datetime(2026, 10, 2, tzinfo=dt.UTC)
    validated = validate_log(shoprec_home, "r1", end)
    assert (validated["rows"], validated["quarantined"]) == (297, 0)


def test_a_rejected_day_fails_the_run(ingest_dag: Any, shoprec_home: Settings) -> None:
    land(shoprec_home, DAY, 100, bad=30)
    run = ingest_dag.test(run_conf={"days": [DAY.isoformat()]})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed"
    assert states["ingest_campaign_logs"] == "failed"
    assert not partition_dir(exposures_lake_dir(shoprec_home), DAY).exists()
