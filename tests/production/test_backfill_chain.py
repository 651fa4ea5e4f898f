"""Issue 16: a backfill of ``ingest_events`` through the scheduler while the asset-triggered DAGs run.

The native stack (``scripts/stack.sh``, CeleryExecutor, PostgreSQL, Redis, the MLflow server, with
``tasks.scheduling.KeepQueuedEventsAssetManager``) gets a small synthetic shop of 20 days in
``landing/``; ``airflow backfill create --dag-id ingest_events`` is made over those days (one run per
day, ``--max-active-runs 1``), then ``ingest_events``, ``build_features``, ``train_recommender`` and
``publish_recommendations`` are unpaused: the backfill lands days while features are built, models
trained and lists published. Once nothing is left running or queued, the tests read the Airflow
metadata database (runs, asset events and which run consumed which), the MLflow server (each
version's ``shoprec.data_end``), the task logs and the ledger.

Small on purpose (2-core machine): 150 users, 50 items, evaluation windows of 4 days (a training
needs 12 days of data), 2 epochs, at most 2 trainings (``SHOPREC_MIN_TRAINING_INTERVAL_HOURS`` 120).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_settings import only_shoprec_env
from helpers_shops import personal_taste_shop
from stack_client import REPO_ROOT, Stack, require_services, start_stack, verify_ledger

from tasks.config import Settings, get_settings

pytestmark = [pytest.mark.production, pytest.mark.integration, pytest.mark.timeout(3600)]

DAYS = 20
DOWNSTREAM = ("build_features", "train_recommender", "publish_recommendations")
SETTLE_TIMEOUT_S = 3000
FINAL = ("success", "failed")


def _stack_settings(stack: Stack) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {k: v for k, v in stack.env.items() if k.startswith("SHOPREC_")})
        return get_settings()


def _metadata(stack: Stack, sql: str, **params: Any) -> list[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def _settled(stack: Stack, token: str, last: dt.datetime) -> bool:
    """Every backfill run final, no downstream run queued or running, no asset event left queued."""
    ingest = [r for r in stack.dag_runs("ingest_events", token, shop_end=last) if r["run_type"] == "backfill"]
    if len(ingest) < DAYS or any(r["state"] not in FINAL for r in ingest):
        return False
    for dag_id in DOWNSTREAM:
        if any(r["state"] not in FINAL for r in stack.dag_runs(dag_id, token)):
            return False
    return not _metadata(stack, "SELECT target_dag_id FROM asset_dag_run_queue")


@pytest.fixture(scope="module")
def backfill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tasks.contracts import list_partitions
    from tasks.sources.synthetic import generate

    require_services()
    started = time.monotonic()
    stack = start_stack(
        tmp_path_factory.mktemp("shoprec-backfill"),
        REPO_ROOT / "dags",
        {
            "SHOPREC_EVAL_DAYS": "4",
            "SHOPREC_MIN_TRAINING_INTERVAL_HOURS": "120",
            "SHOPREC_TRAIN_STEPS": "8",
            "SHOPREC_TRAINING_EPSILON": "3.0",
            "SHOPREC_TRAIN_RETRY_DELAY_S": "10",
        },
    )
    try:
        settings = _stack_settings(stack)
        settings.ensure_dirs()
        # the shop ends yesterday: the scheduled run of ingest_events for that interval is the
        # backfill's, so unpausing the DAG adds no run of its own
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=DAYS)
        generate(
            dataclasses.replace(personal_taste_shop(150, 50), days=DAYS, start=start), settings.landing_dir
        )
        days = list_partitions(settings.landing_dir)
        assert len(days) == DAYS
        last = dt.datetime.combine(days[-1], dt.time(), dt.UTC)
        stack.wait_parsed(["ingest_events", *DOWNSTREAM])
        created = subprocess.run(
            [
                str(Path(sys.executable).parent / "airflow"),
                "backfill",
                "create",
                "--dag-id",
                "ingest_events",
                "--from-date",
                days[0].isoformat(),
                "--to-date",
                days[-1].isoformat(),
                "--max-active-runs",
                "1",
            ],
            env=dict(stack.env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        backfill_started = time.monotonic()
        stack.unpause(["ingest_events", *DOWNSTREAM])
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:  # settled twice, 20 s apart
            time.sleep(20)
            quiet = quiet + 1 if _settled(stack, stack.token(), last) else 0
        print(
            f"backfill chain: {time.monotonic() - backfill_started:.0f} s from unpause to settled, "
            f"{time.monotonic() - started:.0f} s with the stack start"
        )
        token = stack.token()
        yield {
            "stack": stack,
            "settings": settings,
            "days": days,
            "settled": quiet >= 2,
            "runs": {d: stack.dag_runs(d, token, shop_end=last) for d in ("ingest_events", *DOWNSTREAM)},
        }
    finally:
        stack.run("purge", timeout=120)


def _consumed(stack: Stack, asset: str, dag_id: str) -> dict[int, list[str]]:
    """Event id -> the run ids of ``dag_id`` that consumed it, for every event of ``asset``."""
    rows = _metadata(
        stack,
        """SELECT e.id, r.run_id FROM asset_event e JOIN asset a ON a.id = e.asset_id
           LEFT JOIN dagrun_asset_event c ON c.event_id = e.id
           LEFT JOIN dag_run r ON r.id = c.dag_run_id AND r.dag_id = :dag_id
           WHERE a.name = :asset""",
        asset=asset,
        dag_id=dag_id,
    )
    consumed: dict[int, list[str]] = {}
    for event_id, run_id in rows:
        consumed.setdefault(event_id, [])
        if run_id is not None:
            consumed[event_id].append(run_id)
    return consumed


def _event_days(stack: Stack, dag_id: str, run_id: str) -> list[str]:
    """The days named by the events a run consumed (``partitions`` or ``days`` of their extra)."""
    rows = _metadata(
        stack,
        """SELECT e.extra FROM asset_event e JOIN dagrun_asset_event c ON c.event_id = e.id
           JOIN dag_run r ON r.id = c.dag_run_id WHERE r.dag_id = :dag_id AND r.run_id = :run_id""",
        dag_id=dag_id,
        run_id=run_id,
    )
    return sorted({d for (extra,) in rows for d in (extra.get("partitions") or extra.get("days") or [])})


def test_the_backfill_and_the_downstream_dags_settled(backfill: dict[str, Any]) -> None:
    assert backfill["settled"], {
        d: [(r["run_type"], r["state"]) for r in rs] for d, rs in backfill["runs"].items()
    }


def test_every_backfill_run_of_ingest_events_succeeded(backfill: dict[str, Any]) -> None:
    runs = backfill["runs"]["ingest_events"]
    assert [(r["run_type"], r["state"]) for r in runs] == [("backfill", "success")] * DAYS
    assert sorted(r["logical_date"][:10] for r in runs) == [d.isoformat() for d in backfill["days"]]


def test_every_asset_triggered_run_succeeded(backfill: dict[str, Any]) -> None:
    for dag_id in DOWNSTREAM:
        runs = backfill["runs"][dag_id]
        assert runs, dag_id
        assert {(r["run_type"], r["state"]) for r in runs} == {("asset_triggered", "success")}, (dag_id, runs)


def test_every_asset_event_reached_exactly_one_downstream_run(backfill: dict[str, Any]) -> None:
    """apache/airflow#56050: without tasks.scheduling's asset manager, events that arrive while a
    max_active_runs=1 DAG is busy are not consumed (the backfill's last days are never built)."""
    stack = backfill["stack"]
    for asset, dag_id in (("events_clean", "build_features"), ("features", "train_recommender")):
        consumed = _consumed(stack, asset, dag_id)
        assert consumed, asset
        assert {event: len(runs) for event, runs in consumed.items()} == dict.fromkeys(consumed, 1), asset
    built = {
        d
        for r in backfill["runs"]["build_features"]
        for d in _event_days(stack, "build_features", r["dag_run_id"])
    }
    assert built == {d.isoformat() for d in backfill["days"]}


def test_each_training_trained_on_the_data_of_its_own_events(backfill: dict[str, Any]) -> None:
    """The version a run registered says (``shoprec.data_end``) it was trained up to the last day its
    triggering ``features`` events named; runs whose data was too short or too close to the last
    version's were skipped by check_training_due."""
    from tasks.registry import client

    stack, settings = backfill["stack"], backfill["settings"]
    versions = {
        v.tags["shoprec.run_key"]: v.tags
        for v in client(settings).search_model_versions(f"name = '{settings.registered_model_name}'")
    }
    trained = []
    for run in backfill["runs"]["train_recommender"]:
        tis = stack.task_instances("train_recommender", run["dag_run_id"])
        if tis["train_model"]["state"] == "skipped":
            assert run["dag_run_id"] not in versions
            continue
        assert tis["register_and_gate"]["state"] == "success"
        named = _event_days(stack, "train_recommender", run["dag_run_id"])
        assert versions[run["dag_run_id"]]["shoprec.data_end"] == max(named), run["dag_run_id"]
        trained.append(max(named))
    assert trained, "no training ran"
    assert trained == sorted(trained)
    assert len(versions) == len(trained)
    # 12 days are the least a training needs (3 x 4); the days after the last training are within 120 h
    assert trained[0] >= backfill["days"][11].isoformat()
    assert backfill["days"][-1] - dt.date.fromisoformat(trained[-1]) < dt.timedelta(hours=120)


def test_no_task_failed_on_a_grown_catalog(backfill: dict[str, Any]) -> None:
    logs = Path(backfill["stack"].env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    texts = [p.read_text(errors="replace") for p in logs.rglob("*.log") if p.is_file()]
    assert texts
    assert not [t for t in texts if "scores have shape" in t]


def test_the_ledger_verifies(backfill: dict[str, Any]) -> None:
    assert verify_ledger(backfill["stack"]).startswith("ledger verified:")
