"""apache/airflow#56050 on this project's Airflow, at the asset queue, on a real PostgreSQL.

Three asset events reach a DAG that is scheduled on the asset while it is busy (what a backfill of
``ingest_events`` does to ``build_features``). The scheduler's next run of that DAG gets ``run_after``
= the newest ``created_at`` of its queue rows and consumes the events with ``timestamp <= run_after``
(``SchedulerJobRunner._create_dag_runs_asset_triggered``), then deletes the rows. Airflow's stock
``AssetManager`` leaves the row at the first event's time (the bug: the later two are never consumed
by that run, and nothing is left queued to wake the DAG for them); ``tasks.scheduling``'s manager moves
it to the newest event's. The events go through ``register_asset_change``, as the execution API
records a task's outlet events. The test database is created here and dropped afterwards.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from stack_client import require_services

pytestmark = [pytest.mark.production, pytest.mark.integration]

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
ASSET = {"name": "events_clean", "uri": "shoprec://lake/events"}


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """A fresh PostgreSQL database with Airflow's metadata tables (dropped after the module)."""
    require_services()
    from airflow.models import import_all_models
    from airflow.models.base import Base
    from sqlalchemy import create_engine, text

    import_all_models()  # the metadata knows a table once its model is imported

    name = f"shoprec_adrq_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(f"{PG}/{name}")
    try:
        Base.metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _queue_three_events(engine: Any, manager: type, dag_id: str) -> tuple[list[Any], Any]:
    """The asset, a DAG scheduled on it, three events 50 ms apart; (event timestamps, queue row time)."""
    from airflow.models.asset import (
        AssetActive,
        AssetDagRunQueue,
        AssetEvent,
        AssetModel,
        DagScheduleAssetReference,
    )
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        if session.get(DagBundleModel, "dags-folder") is None:
            session.add(DagBundleModel(name="dags-folder"))
        asset = session.scalar(select(AssetModel).where(AssetModel.name == ASSET["name"]))
        if asset is None:
            asset = AssetModel(**ASSET)
            session.add(asset)
            session.flush()
            session.add(AssetActive.for_asset(asset))
        session.add(DagModel(dag_id=dag_id, bundle_name="dags-folder", is_paused=False))
        session.flush()
        session.add(DagScheduleAssetReference(asset_id=asset.id, dag_id=dag_id))
        session.commit()
        for _ in range(3):
            manager.register_asset_change(asset=asset, extra={"days": []}, session=session)
            session.commit()
            time.sleep(0.05)
        stamps = list(
            session.scalars(
                select(AssetEvent.timestamp).where(AssetEvent.asset_id == asset.id).order_by(AssetEvent.id)
            )
        )[-3:]
        queued = session.scalar(
            select(AssetDagRunQueue.created_at).where(AssetDagRunQueue.target_dag_id == dag_id)
        )
        return stamps, queued


def test_airflows_own_manager_leaves_the_later_events_unconsumed(engine: Any) -> None:
    """The bug exists in the pinned Airflow: the queue row keeps the first event's time."""
    from airflow.assets.manager import AssetManager

    stamps, queued = _queue_three_events(engine, AssetManager, "consumer_stock")
    assert stamps[0] <= queued < stamps[1] < stamps[2]  # a run at `queued` consumes event 1 only


def test_the_projects_manager_lets_the_next_run_consume_every_queued_event(engine: Any) -> None:
    from tasks.scheduling import KeepQueuedEventsAssetManager

    stamps, queued = _queue_three_events(engine, KeepQueuedEventsAssetManager, "consumer_kept")
    assert queued >= stamps[2]  # a run at `queued` consumes all three


def test_the_queue_table_has_the_layout_the_workaround_is_written_for() -> None:
    """One row per (asset, DAG): Airflow 3.4 (apache/airflow#70972) keys the rows by event instead,
    and consumes queued events itself; this test then fails, and tasks.scheduling can go."""
    import airflow
    from airflow.assets.manager import AssetManager
    from airflow.models.asset import AssetDagRunQueue

    from tasks.scheduling import KeepQueuedEventsAssetManager

    primary = [c.name for c in AssetDagRunQueue.__table__.primary_key.columns]
    assert sorted(primary) == ["asset_id", "target_dag_id"]
    assert airflow.__version__.startswith("3.3.")
    assert "_queue_dagruns_nonpartitioned_postgres" in vars(AssetManager)
    assert "_queue_dagruns_nonpartitioned_postgres" in vars(KeepQueuedEventsAssetManager)
