"""Audit the privacy ledger: verify it, audit new models empirically, write the compliance report.

Runs on every new champion model (Asset `model_champion`) and on the 1st of each month.
`verify_ledger` checks the ledger's keyed hash chains against every anchor outside the database (MLflow
model versions, compliance reports, earlier audit runs), its references, status transitions and budget
policies, and recomputes every stored epsilon with an independent accountant (dp_accounting); any
problem fails the run at once, without retry. A verified run anchors the ledger's head itself: it
returns it and writes `privacy/anchors/audit-<run id>.json` under the home. `audit_membership` runs the loss-threshold membership-inference attack on
every model version whose per-user losses the trainer stored and that has no audit yet (AUC and the
empirical epsilon lower bound it implies). `write_compliance_report` writes the compliance report (Markdown,
JSON, HTML) to `reports/privacy/<run time>/`: per budget the cap, spent and remaining epsilon
(user-level, RDP accountant, with delta), per model version its privacy statement and audit.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from tasks.assets import MODEL_CHAMPION, default_args


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 4 1 * *", timezone="UTC"), assets=[MODEL_CHAMPION]
    ),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoprec", "privacy", "compliance"],
    default_args=default_args(),
    doc_md=__doc__,
)
def privacy_audit() -> None:
    """Ledger verification -> membership-inference audit -> compliance report."""

    @task(multiple_outputs=False)
    def verify_ledger(*, data_interval_end=None, dag_run=None) -> dict:  # type: ignore[no-untyped-def]
        from dataclasses import asdict

        from airflow.sdk.exceptions import AirflowFailException

        from tasks.config import get_settings
        from tasks.privacy.verify import verify_and_anchor

        result, anchor = verify_and_anchor(
            get_settings(), at=data_interval_end or dag_run.run_after, name=f"audit-{dag_run.run_id}"
        )
        print(result.describe())
        if not result.ok:
            # Tampering or a wrong epsilon does not get better on retry: fail now, loudly.
            raise AirflowFailException(result.describe())
        return {**{k: v for k, v in asdict(result).items() if k != "problems"}, "ledger_anchor": anchor}

    @task
    def audit_membership() -> list[str]:
        from tasks.config import get_settings
        from tasks.privacy.audit import audit_pending, load_audits

        settings = get_settings()
        audited = audit_pending(settings)
        audits = load_audits(settings)
        for version in audited:
            print(f"model version {version}: {audits[version].summary()}")
        return audited

    @task(multiple_outputs=False)
    def write_compliance_report(*, data_interval_end=None, dag_run=None) -> dict:  # type: ignore[no-untyped-def]
        from dataclasses import asdict

        from tasks.config import get_settings
        from tasks.privacy.report import write_report as write

        return asdict(write(get_settings(), at=data_interval_end or dag_run.run_after))

    verify_ledger() >> audit_membership() >> write_compliance_report()


privacy_audit()
