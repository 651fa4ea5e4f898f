"""Publish the champion's top-K recommendations to Feast for every active user.

Triggered when a new champion is promoted (Asset `model_champion`) or when fresh features land
(Asset `features`, the daily refresh). `score_and_publish` loads `models:/<name>@champion` from
MLflow, scores the current catalog for every user of the feature snapshot at the run's scoring time
(the end of the last day of run conf `{"days": [...]}`, else of the triggering `features` event's
partitions, else of the latest feature snapshot; never the wall clock),
keeps the top K with reasons, writes the audit copy
`SHOPREC_HOME/recommendations/publish_id=<version>@<time>/recommendations.parquet` (temp file, rename),
writes the Feast slot that is not live (`user_recommendations_blue|green`), verifies it and only then
switches the feature service `recommendations_v1`. A re-run of the same model and scoring time
changes nothing; a failed run leaves the previous set served. Emits Asset `recommendations`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from tasks.assets import FEATURES, MODEL_CHAMPION, RECOMMENDATIONS, default_args


@dag(
    schedule=(MODEL_CHAMPION | FEATURES),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "publish", "feast"],
    default_args=default_args(),
    doc_md=__doc__,
)
def publish_recommendations() -> None:
    """Champion from MLflow -> top-K per user with reasons -> Feast (blue/green) + audit parquet."""

    @task(multiple_outputs=False, outlets=[RECOMMENDATIONS])
    def score_and_publish(*, dag_run=None, triggering_asset_events=None, outlet_events=None) -> dict:  # type: ignore[no-untyped-def]
        from dataclasses import asdict

        from tasks.config import get_settings
        from tasks.io import asset_event_extras
        from tasks.publishing import resolve_scoring_time, run_publish

        settings = get_settings()
        conf = dag_run.conf if dag_run else None
        scoring_time = resolve_scoring_time(settings, conf, asset_event_extras(triggering_asset_events))
        try:
            manifest = asdict(run_publish(settings, scoring_time))
        except LookupError as exc:
            # No champion yet (fresh features arrived before any model passed the gate): there is
            # nothing to publish and the previous set, if any, stays live. Skip, do not retry.
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"nothing published: {exc}") from exc
        outlet_events[RECOMMENDATIONS].extra = {
            k: manifest[k] for k in ("publish_id", "model_version", "n_users", "slot")
        }
        return manifest

    score_and_publish()


publish_recommendations()
