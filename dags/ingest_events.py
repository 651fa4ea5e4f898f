"""Ingest the day's shop events: pseudonymise user ids, gate with Great Expectations, quarantine.

For every day in the run's data interval, `update_catalog` merges the landing item files into the
item catalog (Asset `item_catalog`), then `pseudonymize_and_validate` replaces user ids by keyed HMAC pseudonyms,
validates the events with the `expectations/events.json` suite and writes good rows to
`lake/events/date=D/` and failing rows, with the expectations they failed, to `quarantine/date=D/`.
A day whose bad-row share exceeds `SHOPREC_MAX_BAD_ROW_SHARE` (default 5%), that fails a table-level
expectation (schema, volume band) or whose batch cannot be read is rejected: nothing of it reaches the
lake, it is kept whole in `quarantine/date=D/` with its report, and the other days go on. The Asset
`events_clean` carries the accepted days, row counts, quarantine counts and the rejected days with
their reasons in its event's extra; then `report_rejected_days` fails the run (without retry) when a
day was rejected, so a rejection is never a silent success.

Every run stores each validation's result under `reports/validations/` and a last task,
`build_data_docs`, renders the run's results into one Great Expectations Data Docs site
(`reports/data_docs/date=D/` for a daily run).

Backfills: `airflow backfill create --dag-id ingest_events --from-date ... --to-date ...` (one run per
day), or one run with the conf `{"days": ["YYYY-MM-DD", ...]}` (what `shoprec demo` does): it updates the
catalog through the last day, then validates the days in order in one task, each judged as its own
daily run would judge it (volume band from the days accepted before it, only the items landed by then),
and builds one Data Docs site. Each run overwrites only its own days.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from tasks.assets import EVENTS_CLEAN, ITEM_CATALOG, default_args


@dag(
    # @daily with a real [day, next day) data interval (a plain "@daily" has a zero-length one in Airflow 3)
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # Early enough for the UCI Online Retail II data (from 2009-12-01); catchup=False, so turning the DAG
    # on schedules only the latest day; older days are loaded with `airflow backfill create`.
    start_date=pendulum.datetime(2009, 12, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "ingest", "great-expectations"],
    default_args=default_args(),
    doc_md=__doc__,
)
def ingest_events() -> None:
    """Landing -> pseudonymised, validated lake partitions + quarantine."""

    @task(outlets=[ITEM_CATALOG])
    def update_catalog(
        *,
        dag_run: Any = None,
        data_interval_start: Any = None,
        data_interval_end: Any = None,
        outlet_events: Any = None,
    ) -> list[dict[str, Any]]:
        from dataclasses import asdict

        from airflow.sdk.exceptions import AirflowFailException

        from tasks import ingest
        from tasks.config import get_settings
        from tasks.contracts import ContractError

        settings = get_settings()
        manifests = []
        try:
            days, _ = ingest.run_days(dag_run.conf, data_interval_start, data_interval_end)
        except ContractError as exc:
            raise AirflowFailException(str(exc)) from exc
        for day in days:
            try:
                manifests.append(asdict(ingest.update_catalog(settings, day)))
            except (ContractError, ingest.IngestRejected) as exc:
                raise AirflowFailException(str(exc)) from exc
        outlet_events[ITEM_CATALOG].extra = {
            "days": [m["day"] for m in manifests],
            "items": manifests[-1]["items"] if manifests else 0,
        }
        return manifests

    @task(outlets=[EVENTS_CLEAN])
    def pseudonymize_and_validate(
        *,
        run_id: Any = None,
        dag_run: Any = None,
        data_interval_start: Any = None,
        data_interval_end: Any = None,
        outlet_events: Any = None,
    ) -> list[dict[str, Any]]:
        from airflow.sdk.exceptions import AirflowFailException

        from tasks import ingest
        from tasks.config import get_settings
        from tasks.contracts import ContractError

        settings = get_settings()
        try:
            days, bound = ingest.run_days(dag_run.conf, data_interval_start, data_interval_end)
            outcomes = ingest.ingest_days(settings, days, run_id=run_id, interval_end=bound)
        except ContractError as exc:  # no landing batch, or no catalog: nothing to quarantine
            raise AirflowFailException(str(exc)) from exc
        outlet_events[EVENTS_CLEAN].extra = ingest.asset_extra(outcomes)
        return outcomes

    @task
    def report_rejected_days(outcomes: list[dict[str, Any]]) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from tasks.ingest import rejection_summary

        summary = rejection_summary(outcomes)
        if summary:
            # After events_clean was emitted: later stages go on with the days that passed, while the
            # run is marked failed so that a rejected day is never a silent success.
            raise AirflowFailException(summary)

    @task(trigger_rule="all_done")  # also after a failed catalog or day: its result is in the site
    def build_data_docs(
        *, dag_run: Any = None, data_interval_start: Any = None, data_interval_end: Any = None
    ) -> str:
        from tasks import ingest
        from tasks.config import get_settings

        days, _ = ingest.run_days(dag_run.conf, data_interval_start, data_interval_end)
        return ingest.build_run_data_docs(get_settings(), days)

    outcomes = pseudonymize_and_validate()
    update_catalog() >> outcomes
    report_rejected_days(outcomes)
    outcomes >> build_data_docs()


ingest_events()
