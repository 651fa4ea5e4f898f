"""Ingest the day's campaign logs: pseudonymise, gate with Great Expectations, quarantine, lake.

For every day of the run (the run conf `{"days": ["YYYY-MM-DD", ...]}`, else the data interval),
`ingest_campaign_logs` reads `landing/date=D/offers*` and `exposures*` (parquet or CSV), replaces user
and decision ids by keyed HMAC pseudonyms (the events' key), runs the `offers` and `exposures` suites
and writes good exposure rows to `lake/campaigns/exposures/date=D/` and failing ones (a propensity
outside (0, 1] included), with the expectations they failed, to `quarantine/campaigns/date=D/` with
counted reasons (see tasks/campaigns/ingest.py). A malformed file, broken offers or a bad-row share
above `SHOPREC_MAX_BAD_ROW_SHARE` reject the day whole: nothing of it reaches the lake. The Asset
`exposures` carries the accepted days in its event's extra and triggers `train_offer_policy`; a run
without any accepted day emits none (skipped when no day landed exposures). `report_rejected_days`
then fails the run (without retry) when a day was rejected.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from tasks.assets import EXPOSURES, default_args


@dag(
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "ingest", "campaigns", "great-expectations"],
    default_args=default_args(),
    doc_md=__doc__,
)
def ingest_campaigns() -> None:
    """Landing campaign logs -> pseudonymised, validated lake partitions + quarantine."""

    @task(outlets=[EXPOSURES])
    def ingest_campaign_logs(
        *,
        dag_run: Any = None,
        data_interval_start: Any = None,
        data_interval_end: Any = None,
        outlet_events: Any = None,
    ) -> list[dict[str, Any]]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from tasks.campaigns import ingest
        from tasks.config import get_settings
        from tasks.contracts import ContractError
        from tasks.io import run_days

        settings = get_settings()
        try:
            days = run_days(dag_run.conf if dag_run else None, (), (data_interval_start, data_interval_end))
            outcomes = ingest.ingest_campaign_days(settings, days)
        except (ContractError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        if not any(o["status"] == "accepted" for o in outcomes):
            rejected = [o["reason"] for o in outcomes if o["status"] == "rejected"]
            if rejected:
                raise AirflowFailException("; ".join(rejected))
            raise AirflowSkipException(f"no exposures landed for {', '.join(d.isoformat() for d in days)}")
        outlet_events[EXPOSURES].extra = ingest.asset_extra(outcomes)
        return outcomes

    @task
    def report_rejected_days(outcomes: list[dict[str, Any]]) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        rejected = [f"{o['day']}: {o['reason']}" for o in outcomes if o["status"] == "rejected"]
        if rejected:
            # after the exposures event: training goes on with the accepted days, the run is failed
            raise AirflowFailException(
                f"{len(rejected)} of {len(outcomes)} days rejected: " + "; ".join(rejected)
            )

    report_rejected_days(ingest_campaign_logs())


ingest_campaigns()
