"""Fault: one corrupt landing batch in a backfill of ``ingest_events`` over several days.

Four synthetic days are landed; the third day's ``events.parquet`` is truncated (an interrupted upload).
The backfill's runs are the ones Airflow's backfill planner makes for ``--from-date/--to-date`` (the
DAG's own timetable, ``iter_dagrun_infos_between``, as ``airflow backfill create`` does); each is run
through real Airflow with ``dag.test()`` in date order, as a backfill with ``max_active_runs=1`` would.
A scheduler-driven backfill (api-server, scheduler, dag-processor) would add minutes of start-up on
two cores without exercising more of the ingest code.  ``tests/integration/test_ingest_corruptions.py``
covers the single-day corruptions; this module covers what a backfill adds: the other days go on.

The reference is an ingest of the clean landing data into a second home with the same pseudonymisation
key, through :func:`tasks.ingest.update_catalog` / :func:`tasks.ingest.ingest_day` (what the tasks call).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers_settings import only_shoprec_env

from tasks.config import Settings, get_settings
from tasks.contracts import list_partitions, partition_dir

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "ingest_events.py"
START = dt.date(2025, 6, 2)
N_DAYS = 4
CORRUPT = START + dt.timedelta(days=2)
DAYS = [START + dt.timedelta(days=k) for k in range(N_DAYS)]


@dataclass
class Backfill:
    settings: Settings
    reference: Settings
    runs: dict[dt.date, dict[str, Any]]  # day -> state, task states, run id, data interval
    corrupt_file: Path
    corrupt_bytes: bytes  # the truncated file as landed
    kept_bytes: bytes | None  # the landing file after the backfill (None: gone)
    clean_bytes: bytes  # the file before it was truncated
    lake_days_before_repair: list[dt.date]
    lake_before_repair: dict[dt.date, bytes]
    quarantine_before_repair: dict[str, dict[str, Any]]  # day -> report.json
    quarantine_after_rerun: dict[str, Any]  # the repaired day's report.json
    rerun: dict[str, Any]
    failure_log: str


def _lake_file(settings: Settings, day: dt.date) -> Path:
    return partition_dir(settings.events_dir, day) / "part-0.parquet"


def _quarantine_reports(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        path.parent.name.removeprefix("date="): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(settings.quarantine_dir.glob("date=*/report.json"))
    }


def _run(dag: Any, logical_date: dt.datetime) -> dict[str, Any]:
    run = dag.test(logical_date=logical_date)
    return {
        "state": str(run.state),
        "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()},
        "run_id": run.run_id,
        "interval": (run.data_interval_start, run.data_interval_end),
    }


def _run_logging_failures(dag: Any, logical_date: dt.datetime) -> tuple[dict[str, Any], str]:
    """:func:`_run`, plus the task log's "Task failed" entries with their tracebacks (what an operator
    reads in the task log; ``dag.test()`` writes no log file)."""
    import structlog
    from structlog.testing import capture_logs

    with capture_logs(processors=[structlog.processors.format_exc_info]) as entries:
        run = _run(dag, logical_date)
    failures = [f"{e['event']}\n{e.get('exception', '')}" for e in entries if "failed" in str(e["event"])]
    return run, "\n".join(failures)


@pytest.fixture(scope="module")
def backfill(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfill]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    from tasks.ingest import ingest_day, update_catalog
    from tasks.sources.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("fault-backfill")
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {"SHOPREC_HOME": str(root / "shoprec")})
        settings = get_settings()
        settings.ensure_dirs()
        generate(
            SyntheticConfig(n_users=80, n_items=30, days=N_DAYS, seed=5, start=START), settings.landing_dir
        )
        corrupt_file = partition_dir(settings.landing_dir, CORRUPT) / "events.parquet"
        clean_bytes = corrupt_file.read_bytes()
        corrupt_bytes = clean_bytes[: len(clean_bytes) // 2]  # an upload cut off half-way
        corrupt_file.write_bytes(corrupt_bytes)

        bag = DagBag(dag_folder=str(DAG_FILE))
        assert bag.import_errors == {}
        dag = bag.get_dag("ingest_events")
        planner = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        first = dt.datetime.combine(DAYS[0], dt.time(), dt.UTC)
        last = dt.datetime.combine(DAYS[-1], dt.time(), dt.UTC)
        planned = [info.data_interval for info in planner.iter_dagrun_infos_between(first, last)]
        assert [i.start.date() for i in planned] == DAYS
        runs, failure_log = {}, ""
        for interval in planned:
            # dag.test() makes a manual run, whose data interval ends at its logical date
            run, failures = _run_logging_failures(dag, interval.end)
            assert run["interval"] == (interval.start, interval.end)
            runs[interval.start.date()] = run
            failure_log += failures
        kept_bytes = corrupt_file.read_bytes() if corrupt_file.exists() else None
        lake_days_before_repair = list_partitions(settings.events_dir)
        lake_before_repair = {d: _lake_file(settings, d).read_bytes() for d in DAYS if d != CORRUPT}
        quarantine_before_repair = _quarantine_reports(settings)

        corrupt_file.write_bytes(clean_bytes)  # the operator re-uploads the day
        rerun = _run(dag, dt.datetime.combine(CORRUPT + dt.timedelta(days=1), dt.time(), dt.UTC))
        quarantine_after_rerun = _quarantine_reports(settings)[CORRUPT.isoformat()]

        reference = get_settings(home=root / "reference")
        reference.ensure_dirs()
        shutil.copytree(settings.landing_dir, reference.landing_dir, dirs_exist_ok=True)
        shutil.copytree(settings.secrets_dir, reference.secrets_dir, dirs_exist_ok=True)  # same key
        for day in DAYS:
            update_catalog(reference, day)
            end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
            ingest_day(reference, day, run_id=f"reference-{day}", interval_end=end)
        yield Backfill(
            settings=settings,
            reference=reference,
            runs=runs,
            corrupt_file=corrupt_file,
            corrupt_bytes=corrupt_bytes,
            kept_bytes=kept_bytes,
            clean_bytes=clean_bytes,
            lake_days_before_repair=lake_days_before_repair,
            lake_before_repair=lake_before_repair,
            quarantine_before_repair=quarantine_before_repair,
            quarantine_after_rerun=quarantine_after_rerun,
            rerun=rerun,
            failure_log=failure_log,
        )


def test_only_the_corrupt_days_run_fails(backfill: Backfill) -> None:
    states = {day: (run["state"], run["tasks"]) for day, run in backfill.runs.items()}
    # issue 15's policy: the corrupt day is quarantined, events_clean goes out with the other days,
    # and report_rejected_days fails the run so that the rejection is never a silent success
    ok = (
        "success",
        {
            "update_catalog": "success",
            "pseudonymize_and_validate": "success",
            "report_rejected_days": "success",
            "build_data_docs": "success",
        },
    )
    failed = (
        "failed",
        {
            "update_catalog": "success",
            "pseudonymize_and_validate": "success",
            "report_rejected_days": "failed",
            "build_data_docs": "success",
        },
    )
    assert states == {day: failed if day == CORRUPT else ok for day in DAYS}


def test_the_failure_names_the_corrupt_file(backfill: Backfill) -> None:
    """The only failure logged in the backfill is the corrupt day's, and its reason names the file."""
    assert backfill.failure_log.startswith("Task failed with exception")
    assert (
        f"AirflowFailException: 1 of 1 days rejected and quarantined (the others went on): "
        f"{CORRUPT.isoformat()}: unreadable batch: {backfill.corrupt_file}: unreadable (ArrowInvalid"
    ) in backfill.failure_log
    assert backfill.failure_log.count("Task failed") == 1


def test_nothing_of_the_corrupt_day_reaches_the_lake_or_the_features_asset(backfill: Backfill) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    assert backfill.lake_days_before_repair == [d for d in DAYS if d != CORRUPT]
    run_ids = [run["run_id"] for run in backfill.runs.values()]
    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == "ingest_events",
                AssetEvent.source_task_id == "pseudonymize_and_validate",
                AssetEvent.source_run_id.in_(run_ids),
            )
        ).all()
        announced = sorted(day for event in events for day in event.extra["days"])
    # build_features is scheduled on events_clean: it hears of every day but the corrupt one
    assert announced == [d.isoformat() for d in DAYS if d != CORRUPT]


def test_only_the_corrupt_day_is_quarantined_as_rejected(backfill: Backfill) -> None:
    reports = backfill.quarantine_before_repair
    assert sorted(reports) == [d.isoformat() for d in DAYS]  # every day gets its report
    statuses = {day: (r["status"], r["rows_quarantined"]) for day, r in reports.items()}
    assert statuses == {d.isoformat(): ("rejected", 0) if d == CORRUPT else ("accepted", 0) for d in DAYS}
    corrupt = reports[CORRUPT.isoformat()]
    assert len(corrupt["errors"]) == 1
    assert corrupt["errors"][0].startswith(f"{backfill.corrupt_file}: unreadable (ArrowInvalid")
    # after the repair the day's report is replaced by the accepted one
    assert backfill.quarantine_after_rerun["status"] == "accepted"
    assert backfill.quarantine_after_rerun["rows_clean"] == backfill.quarantine_after_rerun["rows_in"] > 0


def test_every_other_day_equals_a_clean_ingest_byte_for_byte(backfill: Backfill) -> None:
    for day, data in backfill.lake_before_repair.items():
        assert data == _lake_file(backfill.reference, day).read_bytes(), day


def test_the_corrupt_file_is_kept_for_inspection(backfill: Backfill) -> None:
    assert 0 < len(backfill.corrupt_bytes) < len(backfill.clean_bytes)
    assert backfill.kept_bytes == backfill.corrupt_bytes  # not deleted, moved or rewritten by the backfill


def test_after_the_repair_a_rerun_of_that_day_equals_a_clean_ingest(backfill: Backfill) -> None:
    assert (backfill.rerun["state"], backfill.rerun["tasks"]) == (
        "success",
        {
            "update_catalog": "success",
            "pseudonymize_and_validate": "success",
            "report_rejected_days": "success",
            "build_data_docs": "success",
        },
    )
    assert (
        _lake_file(backfill.settings, CORRUPT).read_bytes()
        == _lake_file(backfill.reference, CORRUPT).read_bytes()
    )
    for day, data in backfill.lake_before_repair.items():  # the rerun touched only its own day
        assert _lake_file(backfill.settings, day).read_bytes() == data, day
