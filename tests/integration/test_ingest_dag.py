"""ingest_events through real Airflow (``dag.test()``) and real Great Expectations."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers_landing import good_events, raw_user, write_events, write_good_day
from helpers_raw_ids import find_raw_ids, lake_event_ids

from tasks.config import Settings

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "ingest_events.py"
DAY = dt.date(2024, 3, 5)


@pytest.fixture(scope="module")
def ingest_dag(airflow_home: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("ingest_events")


def run_day(dag: Any, day: dt.date) -> tuple[str, dict[str, str]]:
    import pendulum

    # A manual run's data interval is the one that ends at its logical date: [day, day + 1) needs day + 1.
    after = day + dt.timedelta(days=1)
    run = dag.test(logical_date=pendulum.datetime(after.year, after.month, after.day, tz="UTC"))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return str(run.state), states


def test_good_day_succeeds_and_fills_the_lake(ingest_dag: Any, shoprec_home: Settings) -> None:
    rows = write_good_day(shoprec_home.landing_dir, DAY, n=30)
    state, states = run_day(ingest_dag, DAY)
    assert state == "success"
    assert states == {
        "update_catalog": "success",
        "pseudonymize_and_validate": "success",
        "report_rejected_days": "success",
        "build_data_docs": "success",
    }
    lake = pq.read_table(shoprec_home.events_dir / "date=2024-03-05" / "part-0.parquet")
    assert set(lake.column("event_id").to_pylist()) == lake_event_ids(
        shoprec_home, (r["event_id"] for r in rows)
    )
    assert lake.num_rows == len(rows)
    report = json.loads((shoprec_home.quarantine_dir / "date=2024-03-05" / "report.json").read_text())
    assert (report["status"], report["rows_quarantined"]) == ("accepted", 0)
    site = shoprec_home.reports_dir / "data_docs" / "date=2024-03-05"
    pages = sorted(
        p.relative_to(site / "validations").as_posix() for p in (site / "validations").rglob("*.html")
    )
    # one site for the run: the day's events and its (new) item catalog, each validated once
    assert [page.split("/")[:2] for page in pages] == [["events", "2024-03-05"], ["items", "2024-03-05"]]
    assert "2024-03-05" in (site / "index.html").read_text()
    assert (shoprec_home.items_dir / "items.parquet").is_file()


def last_events_clean_extra() -> dict[str, Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        event = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "events_clean")
            .order_by(AssetEvent.id.desc())
        ).first()
        return dict(event.extra)


def test_good_day_emits_asset_event_with_counts(ingest_dag: Any, shoprec_home: Settings) -> None:
    write_good_day(shoprec_home.landing_dir, DAY, n=30)
    rows = good_events(DAY, 30)
    rows[0]["unit_price"] = -1.0  # one purchase with a negative price: quarantined, under the 5% bar
    rows[0]["event_type"] = "purchase"
    write_events(shoprec_home.landing_dir, DAY, rows)
    state, _ = run_day(ingest_dag, DAY)
    assert state == "success"
    assert last_events_clean_extra() == {
        "days": ["2024-03-05"],
        "rows_clean": {"2024-03-05": 29},
        "rows_quarantined": {"2024-03-05": 1},
        "rejected_days": {},
    }


def test_corrupted_day_is_reported_and_keeps_lake_empty(ingest_dag: Any, shoprec_home: Settings) -> None:
    """A rejected day: quarantined with its report, listed in the events_clean event (no accepted day,
    so later stages build nothing), and the run fails in report_rejected_days: never a silent success."""
    write_good_day(shoprec_home.landing_dir, DAY, n=20)
    rows = good_events(DAY, 20)
    for row in rows[:4]:
        row["item_id"] = "item-not-in-catalog"
    rows[4]["event_timestamp"] = dt.datetime(2024, 3, 9, tzinfo=dt.UTC)
    write_events(shoprec_home.landing_dir, DAY, rows)
    state, states = run_day(ingest_dag, DAY)
    assert state == "failed"
    assert states == {
        "update_catalog": "success",
        "pseudonymize_and_validate": "success",
        "report_rejected_days": "failed",
        "build_data_docs": "success",
    }
    extra = last_events_clean_extra()
    assert (extra["days"], list(extra["rejected_days"])) == ([], ["2024-03-05"])
    assert "5 of 20 rows failed row-level expectations" in extra["rejected_days"]["2024-03-05"]
    assert not (shoprec_home.events_dir / "date=2024-03-05").exists()
    quarantine = pq.read_table(shoprec_home.quarantine_dir / "date=2024-03-05" / "rows.parquet").to_pylist()
    reasons = {row["source_row"]: row["failed_expectations"] for row in quarantine}
    assert reasons == {
        **{i: ["item_id_in_catalog"] for i in range(4)},
        4: ["event_timestamp_in_day", "event_timestamp_not_in_future"],
    }
    quarantined_ids = {row["event_id"] for row in quarantine}
    assert quarantined_ids == lake_event_ids(shoprec_home, (rows[i]["event_id"] for i in range(5)))
    report = json.loads((shoprec_home.quarantine_dir / "date=2024-03-05" / "report.json").read_text())
    assert report["status"] == "rejected"


def test_no_raw_user_id_in_lake_quarantine_reports_or_airflow_logs(
    ingest_dag: Any, shoprec_home: Settings, airflow_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rows = write_good_day(shoprec_home.landing_dir, DAY, n=30)
    rows[0]["event_type"], rows[0]["unit_price"] = "purchase", 0.0  # a quarantined row carries an id too
    write_events(shoprec_home.landing_dir, DAY, rows)
    state, _ = run_day(ingest_dag, DAY)
    raw_ids = {raw_user(k) for k in range(8)}
    assert state == "success"
    searched = [shoprec_home.lake_dir, shoprec_home.quarantine_dir, shoprec_home.reports_dir, airflow_home]
    assert [hit for root in searched for hit in find_raw_ids(root, raw_ids)] == []
    output = capfd.readouterr()
    assert not any(raw in output.out + output.err for raw in raw_ids)
    assert find_raw_ids(shoprec_home.landing_dir, raw_ids) != []  # the search can find them


ONLINE_RETAIL_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "online_retail_sample.parquet"


def test_online_retail_days_ingest_through_the_dag(ingest_dag: Any, shoprec_home: Settings) -> None:
    """Real UCI Online Retail II invoices (CC BY 4.0 sample) -> landing -> ingest_events, two days."""
    from tasks.sources.online_retail import load_online_retail

    days = (dt.date(2010, 3, 28), dt.date(2010, 6, 15))
    load_online_retail(ONLINE_RETAIL_SAMPLE, shoprec_home.landing_dir, start=days[0], end=days[1])
    for day in days:
        landing = pq.read_table(shoprec_home.landing_dir / f"date={day.isoformat()}" / "events.parquet")
        state, states = run_day(ingest_dag, day)
        assert (state, states["pseudonymize_and_validate"]) == ("success", "success")
        lake = pq.read_table(shoprec_home.events_dir / f"date={day.isoformat()}" / "part-0.parquet")
        quarantined = pq.read_table(shoprec_home.quarantine_dir / f"date={day.isoformat()}" / "rows.parquet")
        assert lake.num_rows + quarantined.num_rows == landing.num_rows
        assert lake.num_rows > 1000
        assert set(lake.column("event_type").to_pylist()) == {"purchase"}
        raw_users = set(landing.column("user_id").to_pylist())
        lake_users = set(lake.column("user_id").to_pylist())
        assert raw_users.isdisjoint(lake_users)
        assert all(user.startswith("u_") and len(user) == 34 for user in lake_users)
