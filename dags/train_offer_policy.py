"""Learn which customer gets which offer from logged campaigns, check it off-policy, gate, register.

On the Asset `exposures` (emitted by `ingest_campaigns`). `validate_exposures` gates the lake's
exposures of the `SHOPREC_OFFER_LOG_DAYS` up to the end of the last day the triggering events (or the
run conf `{"days": [...]}`) name (propensity in (0, 1], known actions; bad rows quarantined with
counted reasons).
`train_reward_model` trains the user-level DP-SGD reward model (Opacus, one example per user, Poisson
sampling, noise from OS entropy), reserving `SHOPREC_OFFER_TRAINING_EPSILON` on the privacy ledger
(RDP accountant, the budget's delta) and committing it with the model file. `build_candidate` turns
its scores into an exploring greedy policy with exact probabilities. `evaluate_policies` estimates
candidate, running (logging) policy, offering to nobody and to everybody with IPS, SNIPS and DR inside
the trust boundary; `release_estimates` lets them out only through a DP release with its own ledger
charge (`SHOPREC_OFFER_RELEASE_EPSILON`). `register_policy` registers `shoprec-offer-policy` in
MLflow (alias `challenger`) and promotes it to `champion` only when the lower bound of its released
incremental profit beats the running policy's and its expected redemption cost fits
`SHOPREC_OFFER_DAILY_COST_BUDGET`; the decision and its reasons are the version's `gate.*` tags. `publish_offers` writes a promoted
policy's offer per customer to the Feast view `user_offers` (service `offers_v1`, read by
`shoprec offer USER`) and releases the decision set's exposure by country and recency band with DP
(`SHOPREC_OFFER_EXPOSURE_EPSILON`, its own ledger charge; the MLflow run's `exposure/exposure.json`).
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import dag, task

from tasks.assets import EXPOSURES, default_args


@dag(
    schedule=[EXPOSURES],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "campaigns", "opacus", "mlflow"],
    default_args=default_args(),
    doc_md=__doc__,
)
def train_offer_policy() -> None:
    """exposures -> DP reward model -> candidate -> OPE -> DP release -> gate -> MLflow."""

    @task(multiple_outputs=False)
    def validate_exposures(
        *, run_id=None, dag_run=None, triggering_asset_events=None, data_interval_end=None
    ) -> dict:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import validate_log, window_end
        from tasks.config import get_settings
        from tasks.io import asset_event_extras

        conf = dag_run.conf if dag_run else None
        end = window_end(conf, asset_event_extras(triggering_asset_events), data_interval_end)
        return validate_log(get_settings(), run_id, end)

    @task(multiple_outputs=False, execution_timeout=pendulum.duration(hours=1))
    def train_reward_model(validated: dict, *, run_id=None) -> dict:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import train_reward
        from tasks.config import get_settings

        return train_reward(get_settings(), run_id, validated)

    @task(multiple_outputs=False)
    def build_candidate(trained: dict, *, run_id=None) -> dict:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import build_candidate as build
        from tasks.config import get_settings

        return build(get_settings(), run_id, trained)

    @task(multiple_outputs=False)
    def evaluate_policies(built: dict, *, run_id=None) -> dict:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import evaluate_policies as evaluate
        from tasks.config import get_settings

        return evaluate(get_settings(), run_id, built)

    @task(multiple_outputs=False)
    def release_estimates(validated: dict, evaluated: dict, *, run_id=None) -> list:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import release_estimates as release
        from tasks.config import get_settings

        return release(get_settings(), run_id, validated, evaluated)

    @task(multiple_outputs=False)
    def register_policy(trained: dict, released: list, *, run_id=None) -> dict:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import register_policy as register
        from tasks.config import get_settings

        return register(get_settings(), run_id, trained, released)

    @task(multiple_outputs=False)
    def publish_offers(validated: dict, registration: dict, *, run_id=None) -> int:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import publish_if_promoted
        from tasks.config import get_settings

        at = dt.datetime.fromisoformat(validated["window_end"])
        return publish_if_promoted(get_settings(), run_id, registration, at)

    validated = validate_exposures()
    trained = train_reward_model(validated)
    evaluated = evaluate_policies(build_candidate(trained))
    publish_offers(validated, register_policy(trained, release_estimates(validated, evaluated)))


train_offer_policy()
