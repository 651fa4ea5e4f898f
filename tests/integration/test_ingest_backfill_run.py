"""One ``ingest_events`` run over many days (conf ``{"days": [...]}``) gives what one run per day gives.

Real Airflow (``dag.test()``) and real Great Expectations, on a small shop of five days with a bad day
(a third of its events name unknown items: rejected) and an item that lands only on day 4 while day 2
already names it (one row quarantined, the day accepted).  Both paths run in the same SHOPREC_HOME,
one after the other (same pseudonymisation key), and must leave byte-identical lake and quarantine files.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers_landing import catalog_items, good_events, write_events, write_items

from tasks.config import Settings
from tasks.ingest import rejected_days

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "ingest_events.py"
DAYS = [dt.date(2024, 3, 4) + dt.timedelta(days=i) for i in range(5)]
BAD_DAY, EARLY_DAY = DAYS[2], DAYS[1]


@pytest.fixture(scope="module")
def ingest_dag(airflow_home: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("ingest_events")


def land_shop(landing: Path) -> None:
    write_items(landing, DAYS[0], catalog_items(DAYS[0]))
    write_items(landing, DAYS[3], catalog_items(DAYS[3], ("item-late",)))
    for day in DAYS:
        rows = good_events(day, 40, prefix=day.isoformat())
        if day == BAD_DAY:
            for row in rows[:13]:
                row["item_id"] = "item-unknown"
        if day == EARLY_DAY:
            rows[0]["item_id"] = "item-late"  # lands on day 4: unknown on day 2
        write_events(landing, day, rows)


def outputs(settings: Settings) -> dict[str, bytes]:
    """Every lake and quarantine file, by path relative to the home."""
    return {
        str(path.relative_to(settings.home)): path.read_bytes()
        for folder in (settings.events_dir, settings.quarantine_dir, settings.items_dir)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith("_")
    }


def test_one_run_over_the_days_gives_the_lake_of_one_run_per_day(
    ingest_dag: Any, shoprec_home: Settings
) -> None:
    from tasks.orchestration import interval_end_for_day

    land_shop(shoprec_home.landing_dir)
    per_day = []
    for day in DAYS:
        run = ingest_dag.test(logical_date=interval_end_for_day(day))
        per_day.append(str(run.state))
    assert per_day == ["success", "success", "failed", "success", "success"]  # the bad day fails its run
    daily = outputs(shoprec_home)
    daily_rejected = rejected_days(shoprec_home, DAYS[0], DAYS[-1])
    assert daily_rejected == [BAD_DAY]

    for folder in (shoprec_home.events_dir, shoprec_home.quarantine_dir, shoprec_home.items_dir):
        shutil.rmtree(folder)
    shutil.rmtree(shoprec_home.reports_dir)
    run = ingest_dag.test(run_conf={"days": [d.isoformat() for d in DAYS]})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {
        "update_catalog": "success",
        "pseudonymize_and_validate": "success",
        "report_rejected_days": "failed",  # the bad day, named; the other days are in the lake
        "build_data_docs": "success",
    }
    assert rejected_days(shoprec_home, DAYS[0], DAYS[-1]) == daily_rejected
    batched = outputs(shoprec_home)
    assert sorted(batched) == sorted(daily)
    assert [name for name in daily if batched[name] != daily[name]] == []
    lake_days = sorted(p.name for p in shoprec_home.events_dir.iterdir())
    assert lake_days == [f"date={d.isoformat()}" for d in DAYS if d != BAD_DAY]
    # one Data Docs site for the run, with every day's events and each catalog that was validated
    site = shoprec_home.reports_dir / "data_docs" / "dates=2024-03-04_2024-03-08"
    pages = sorted(p.relative_to(site / "validations").parts[:2] for p in site.glob("validations/**/*.html"))
    assert pages == [
        *(("events", d.isoformat()) for d in DAYS),
        ("items", DAYS[0].isoformat()),
        ("items", DAYS[3].isoformat()),
    ]
