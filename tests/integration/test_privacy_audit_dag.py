"""privacy_audit through real Airflow (``dag.test()``): verify -> audit -> report, and loud failure."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.config import Settings
from tasks.privacy.accounting import DpSgdMechanism
from tasks.privacy.anchors import anchors_dir
from tasks.privacy.audit import write_membership_losses
from tasks.privacy.ledger_key import open_ledger

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "privacy_audit.py"
DELTA = 1e-5


@pytest.fixture(scope="module")
def audit_dag(airflow_home: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("privacy_audit")


def _trained_model(settings: Settings) -> None:
    ledger = open_ledger(settings)
    ledger.ensure_budget("events", epsilon_cap=8.0, delta=DELTA, period_days=365)
    charge = ledger.reserve(
        scope="events",
        run_id="manual__1",
        mechanism=DpSgdMechanism(1.0, 0.02, 300, 1.0, 20),
        data_window=(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),
        n_users=500,
        code_version="abc",
        data_hash="sha256:x",
        purpose="train_recommender",
    )
    ledger.commit(charge.id, model_version="1", artifact_uri="models:/shoprec-two-tower/1")
    ledger.close()
    rng = np.random.default_rng(5)
    write_membership_losses(settings, "1", rng.gamma(2, 0.5, 200), rng.gamma(2, 1.0, 200), delta=DELTA)


def _run(dag: Any) -> tuple[str, dict[str, str]]:
    import pendulum

    run = dag.test(logical_date=pendulum.datetime(2026, 3, 1, 4, tz="UTC"))
    return str(run.state), {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_monthly_run_verifies_audits_and_reports(audit_dag: Any, shoprec_home: Settings) -> None:
    _trained_model(shoprec_home)
    state, states = _run(audit_dag)
    assert state == "success"
    assert set(states.values()) == {"success"}
    (folder,) = (shoprec_home.reports_dir / "privacy").iterdir()
    data = json.loads((folder / "privacy_report.json").read_text())
    assert data["verification"]["ok"] is True
    assert data["models"][0]["audit"]["auc"] > 0.6
    # the run anchored the verified head under the home (1 budget, 1 charge, 2 events)
    (anchor_file,) = anchors_dir(shoprec_home).glob("audit-*.json")
    anchor = json.loads(anchor_file.read_text())
    assert sum(h["rows"] for h in anchor["tables"].values()) == 4
    assert data["ledger_anchor"] == anchor


def test_tampered_ledger_fails_the_run_without_report(audit_dag: Any, shoprec_home: Settings) -> None:
    _trained_model(shoprec_home)
    connection = sqlite3.connect(shoprec_home.resolved_ledger_url.removeprefix("sqlite:///"))
    connection.execute("UPDATE privacy_charges SET epsilon = epsilon / 10")
    connection.commit()
    connection.close()
    state, states = _run(audit_dag)
    assert state == "failed"
    assert states["verify_ledger"] == "failed"
    assert not (shoprec_home.reports_dir / "privacy").exists()
