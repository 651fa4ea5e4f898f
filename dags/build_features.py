"""Build the user and item features of new lake partitions and load them into Feast.

Triggered by the Asset `events_clean` (ingest). The days come from the run conf `{"days": [...]}`
(demo, backfill), else from the triggering asset events' extra (`partitions` or `days`: the days
ingest accepted; a run whose triggering days were all rejected is skipped), else from the data
interval. `compute_features` writes one point-in-time snapshot per day
(`features/user_features/D.parquet`, `event_timestamp` = D+1 00:00 UTC, plus raw item popularity) and
refreshes the item features with title embeddings (all-MiniLM-L6-v2, cached by title hash);
`apply_feast_definitions` registers the Feast objects (idempotent); `materialize_features` loads the
snapshots of those days, `[first snapshot, last snapshot]`, into the online store and emits the Asset
`features`. Re-running a run rewrites the same files and the same online rows. After an out-of-order
backfill, re-run the latest day so that the online store holds the newest snapshot.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from tasks.assets import EVENTS_CLEAN, FEATURES, default_args


@dag(
    schedule=[EVENTS_CLEAN],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "features", "feast"],
    default_args=default_args(retry_delay=pendulum.duration(seconds=30)),
    doc_md=__doc__,
)
def build_features() -> None:
    """Lake partitions -> point-in-time features (parquet) -> Feast registry and online store."""

    @task
    def resolve_days(  # type: ignore[no-untyped-def]
        *, dag_run=None, triggering_asset_events=None, data_interval_start=None, data_interval_end=None
    ) -> list[str]:
        from tasks.io import asset_event_extras, run_days

        extras = asset_event_extras(triggering_asset_events)
        days = run_days(dag_run.conf if dag_run else None, extras, (data_interval_start, data_interval_end))
        rejected = sorted({day for extra in extras for day in extra.get("rejected_days") or {}})
        if not days and rejected:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"no accepted days to build: ingest rejected {', '.join(rejected)}")
        if not days:
            raise ValueError("build_features: no days in the run conf, asset events or data interval")
        return [d.isoformat() for d in days]

    @task(multiple_outputs=False)
    def compute_features(days: list[str]) -> dict:
        import datetime as dt
        from dataclasses import asdict

        from tasks.config import get_settings
        from tasks.features import compute_features as compute

        manifest = asdict(compute(get_settings(), [dt.date.fromisoformat(d) for d in days]))
        manifest.pop("files")  # paths follow from the days; keep the XCom small
        return manifest

    @task(multiple_outputs=False)
    def apply_feast_definitions() -> dict:
        from dataclasses import asdict

        from tasks.config import get_settings
        from tasks.feast_store import apply_definitions as apply

        return asdict(apply(get_settings()))

    @task(multiple_outputs=False, outlets=[FEATURES])
    def materialize_features(manifest: dict, *, outlet_events=None) -> dict:  # type: ignore[no-untyped-def]
        import datetime as dt
        from dataclasses import asdict

        from tasks.config import get_settings
        from tasks.feast_store import materialize

        result = asdict(
            materialize(
                get_settings(),
                dt.datetime.fromisoformat(manifest["start"]),
                dt.datetime.fromisoformat(manifest["end"]),
            )
        )
        outlet_events[FEATURES].extra = {
            "partitions": manifest["days"],
            "start": result["start"],
            "end": result["end"],
            "user_rows": manifest["user_rows"],
            "embedding_model": manifest["embedding_model"],
        }
        return result

    manifest = compute_features(resolve_days())
    apply_feast_definitions() >> materialize_features(manifest)


build_features()
