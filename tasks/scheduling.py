"""Airflow's asset manager for ShopRec's deployments: every queued asset event reaches a DAG run.

Loaded by Airflow itself (``[core] asset_manager_class``, ``AIRFLOW__CORE__ASSET_MANAGER_CLASS =
tasks.scheduling.KeepQueuedEventsAssetManager``; ``scripts/stack.sh`` and the compose file set it),
never by a DAG file or another module of ``tasks``.

**The bug it works around** (apache/airflow#56050, "Most recent Asset events ignored when
max_active_runs = 1"; present in the Airflow 3.3.2 this project pins, on PostgreSQL). When an asset
event arrives, ``AssetManager`` queues a run of each DAG scheduled on the asset with ``INSERT ... ON
CONFLICT DO NOTHING`` into ``asset_dag_run_queue``: one row per (asset, DAG), so the row keeps the
``created_at`` of the *first* event queued since that DAG's last run. The scheduler
(``SchedulerJobRunner._create_dag_runs_asset_triggered``) creates the next run with ``run_after`` =
that time, gives it the events with ``timestamp <= run_after`` only, and deletes the row. A DAG with
``max_active_runs=1`` that is busy while several events arrive (``build_features`` and
``train_recommender`` during a backfill of ``ingest_events``) therefore consumes only the first of
them; the others stay unconsumed, with no queue row left to wake the DAG, until some later event
arrives. After the last day of a backfill none does: the newest days are never built or trained on.

:class:`KeepQueuedEventsAssetManager` moves the row's ``created_at`` forward to the newest event
instead (``ON CONFLICT DO UPDATE SET created_at = greatest(old, new)``, what later Airflow versions
do, apache/airflow#62501), so the next run consumes every event that arrived while the DAG was busy:
one run for all of them, whose days ``tasks.io.run_days`` merges (a training pins the newest). Other
databases take Airflow's other path (``session.merge``, which already moves ``created_at``), unchanged.

``tests/production/test_asset_queue_postgres.py`` shows the stock manager's behaviour and this one's
on a real PostgreSQL; ``tests/production/test_backfill_chain.py`` drives a backfill through the
scheduler with it. Remove it once the pinned Airflow consumes queued events itself (that test fails
when the queue table's layout changes, as it does in Airflow 3.4, apache/airflow#70972).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Set
from typing import TYPE_CHECKING

from airflow.assets.manager import AssetManager
from airflow.models.asset import AssetDagRunQueue
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

if TYPE_CHECKING:
    from airflow.models.dag import DagModel
    from sqlalchemy.orm import Session


class KeepQueuedEventsAssetManager(AssetManager):
    """Airflow's ``AssetManager``, except that a DAG's queue row keeps the time of its newest event."""

    @classmethod
    def _queue_dagruns_nonpartitioned_postgres(
        cls, asset_id: int, dags_to_queue: Set[DagModel], session: Session
    ) -> None:
        now = dt.datetime.now(dt.UTC)  # the queue time, as Airflow's column default sets it
        values = [{"target_dag_id": dag.dag_id, "created_at": now} for dag in dags_to_queue]
        stmt = insert(AssetDagRunQueue).values(asset_id=asset_id)
        stmt = stmt.on_conflict_do_update(
            index_elements=[AssetDagRunQueue.asset_id, AssetDagRunQueue.target_dag_id],
            set_={"created_at": func.greatest(AssetDagRunQueue.created_at, stmt.excluded.created_at)},
        )
        session.execute(stmt, values)
