"""Train the two-tower recommender with user-level DP-SGD, register it in MLflow, gate its promotion.

Runs when the Asset `features` is updated. `check_training_due` judges the run on its own data (the
lake days up to the last day its triggering events or conf name, as `train_model` pins them), on data
time, never the clock: it skips the run when that data covers fewer than 3 x `SHOPREC_EVAL_DAYS` days,
or ends less than `SHOPREC_MIN_TRAINING_INTERVAL_HOURS` after the newest registered version's data end
(tag `shoprec.data_end`; a run triggered by an older event during a backfill is therefore skipped).

`pin_training_data` (default queue: the worker with the lake and Feast's offline store) pins the run's
data once: the lake days up to the last day its triggering `features` events name (or the run conf's
`days`; a manual run without them: the latest partition), their events, the item catalog, the Feast user
state the run reads and the rejected days, as of then (`tasks.training_data`); it refuses, without retry,
when more than `SHOPREC_MAX_REJECTED_DAY_SHARE` of the window's days were rejected by ingest.
`train_model` (queue `gpu`, pool `gpu`), its retries, `register_and_gate` and `record_membership_losses`
read only that pin, however the lake grew since, and need neither the lake nor Feast.
The tasks hand each other URIs in the shared artifact store (`tasks.artifacts`,
`SHOPREC_ARTIFACT_STORE_URL`), never worker paths: the pinned data, both models, the training users, and
for a retry on any worker the checkpoint and the DP popularity releases (written once). `train_model`
reserves the DP popularity releases and the DP-SGD run on the
privacy ledger, calibrates the noise multiplier to the budget the ledger grants
(`SHOPREC_TRAINING_EPSILON` per training, user level, RDP accountant, the budget's delta), trains with
Opacus (ghost clipping, Poisson sampling of users; CUDA when present) and its non-private twin, and tunes
the score blend on a validation window. A retry reuses the pinned data, the reservation and the checkpoint.
`register_and_gate` evaluates challenger, twin, champion and baselines on the same temporal split,
logs one MLflow run, registers the version (alias `challenger`) with its privacy statement, commits
the ledger charges and applies the promotion gate (`SHOPREC_PROMOTION_TOLERANCE`); the decision and
its reasons are the version's `gate.*` tags. The Asset `model_champion` is emitted only when the
champion changed. `record_membership_losses` stores the registered version's per-user losses of its
training users and of held-out users for the `privacy_audit` DAG's membership-inference audit.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from tasks.assets import FEATURES, MODEL_CHAMPION, default_args, gpu_executor_config, training_retry_delay


@dag(
    schedule=[FEATURES],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "training", "opacus", "mlflow"],
    # The first retry waits 1-2x SHOPREC_TRAIN_RETRY_DELAY_S (exponential backoff with jitter).
    default_args=default_args(retry_delay=training_retry_delay()),
    doc_md=__doc__,
)
def train_recommender() -> None:
    """features -> DP-SGD challenger in MLflow -> promotion gate -> model_champion."""

    @task.short_circuit
    def check_training_due(*, run_id=None, dag_run=None, triggering_asset_events=None) -> bool:  # type: ignore[no-untyped-def]
        from tasks.config import get_settings
        from tasks.io import asset_event_extras, run_days
        from tasks.registry import training_due

        # judged on the run's own data end (its triggering events' days), not the lake's latest day
        days = run_days(dag_run.conf if dag_run else None, asset_event_extras(triggering_asset_events))
        decision = training_due(get_settings(), days, run_key=run_id)
        print(f"training {'due' if decision.due else 'not due'}: {decision.reason}")
        return decision.due

    @task(multiple_outputs=False, execution_timeout=pendulum.duration(hours=1))
    def pin_training_data(*, run_id=None, dag_run=None, triggering_asset_events=None) -> dict:  # type: ignore[no-untyped-def]
        from airflow.sdk.exceptions import AirflowFailException

        from tasks.config import get_settings
        from tasks.io import asset_event_extras, run_days
        from tasks.training_data import TrainingRefused
        from tasks.training_data import pin_training_data as pin

        # the days of the triggering `features` events (or the run conf): the run's data end, pinned
        # once so that every try of train_model and register_and_gate read the same data
        days = run_days(dag_run.conf if dag_run else None, asset_event_extras(triggering_asset_events))
        try:
            data = pin(get_settings(), run_id, days)
        except TrainingRefused as exc:  # too much of the window rejected: a retry would not help
            raise AirflowFailException(str(exc)) from exc
        return {"training_data_uri": data.uri, "days": len(data.days), "data_end": data.days[-1].isoformat()}

    @task(
        multiple_outputs=False,
        queue="gpu",
        pool="gpu",
        execution_timeout=pendulum.duration(hours=3),
        # Under the KubernetesExecutor: the CUDA trainer image with one GPU; the CeleryExecutor routes
        # the task to the `gpu` queue's workers instead.
        executor_config=gpu_executor_config(),
    )
    def train_model(pinned: dict, *, run_id=None) -> dict:  # type: ignore[no-untyped-def]
        from tasks.config import get_settings
        from tasks.training import run_training

        # the pin's URI only: this worker needs neither the lake nor Feast
        uri = pinned["training_data_uri"]
        return run_training(get_settings(), run_key=run_id, training_data_uri=uri).to_dict()

    @task(multiple_outputs=False, execution_timeout=pendulum.duration(hours=1))
    def register_and_gate(manifest: dict) -> dict:
        from tasks.config import get_settings
        from tasks.registry import register_and_gate as register

        return register(get_settings(), manifest).to_dict()

    @task(multiple_outputs=False, execution_timeout=pendulum.duration(hours=1))
    def record_membership_losses(manifest: dict, registration: dict) -> dict:
        from tasks.config import get_settings
        from tasks.membership import record_membership_losses as record

        return record(get_settings(), manifest, registration).to_dict()

    @task.short_circuit
    def check_champion_changed(registration: dict) -> bool:
        return bool(registration["champion_changed"])

    @task(outlets=[MODEL_CHAMPION])
    def announce_champion(registration: dict, *, outlet_events=None) -> str:  # type: ignore[no-untyped-def]
        outlet_events[MODEL_CHAMPION].extra = {"version": registration["version"]}
        return str(registration["version"])

    pinned = pin_training_data()
    check_training_due() >> pinned
    manifest = train_model(pinned)
    registration = register_and_gate(manifest)
    losses = record_membership_losses(manifest, registration)  # before the asset wakes privacy_audit
    losses >> check_champion_changed(registration) >> announce_champion(registration)


train_recommender()
