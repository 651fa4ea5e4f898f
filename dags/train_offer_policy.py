"""Learn which customer gets which offer from logged campaigns, check it off-policy, gate, register.

Daily. `validate_exposures` gates the exposures of the `SHOPREC_OFFER_LOG_DAYS` before the data
interval's end (propensity in (0, 1], known actions; bad rows quarantined with counted reasons).
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

import pendulum
from airflow.sdk import dag, task


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "campaigns", "opacus", "mlflow"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=1)},
    doc_md=__doc__,
)
def train_offer_policy() -> None:
    """exposures -> DP reward model -> candidate -> OPE -> DP release -> gate -> MLflow."""

    @task(multiple_outputs=False)
    def validate_exposures(*, run_id=None, data_interval_end=None) -> dict:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import validate_log
        from tasks.config import get_settings

        return validate_log(get_settings(), run_id, data_interval_end)

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
    def publish_offers(registration: dict, *, run_id=None, data_interval_end=None) -> int:  # type: ignore[no-untyped-def]
        from tasks.campaigns.pipeline import publish_if_promoted
        from tasks.config import get_settings

        return publish_if_promoted(get_settings(), run_id, registration, data_interval_end)

    validated = validate_exposures()
    trained = train_reward_model(validated)
    evaluated = evaluate_policies(build_candidate(trained))
    publish_offers(register_policy(trained, release_estimates(validated, evaluated)))


train_offer_policy()
