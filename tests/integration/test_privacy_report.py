"""Statements in the real MLflow registry and the compliance report built from ledger, registry and audits."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tasks.config import Settings
from tasks.privacy.accounting import DpSgdMechanism, GaussianCountMechanism
from tasks.privacy.anchors import ANCHOR_TAG
from tasks.privacy.audit import audit_pending, write_membership_losses
from tasks.privacy.cli import app
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.statement import (
    ANCHOR_ARTIFACT,
    STATEMENT_ARTIFACT,
    PrivacyStatement,
    attach_to_model_version,
)

pytestmark = pytest.mark.integration

DELTA = 1e-5
JANUARY = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
FEBRUARY = (dt.datetime(2026, 2, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
AT = "2026-03-02T00:00:00+00:00"


def _register_version(settings: Settings) -> str:
    from mlflow import MlflowClient

    settings.ensure_dirs()
    client = MlflowClient(settings.resolved_mlflow_tracking_uri, settings.resolved_mlflow_registry_uri)
    experiment = client.create_experiment(
        "privacy-test", artifact_location=settings.mlflow_artifact_root.as_uri()
    )
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(settings.registered_model_name)
    version = client.create_model_version(
        settings.registered_model_name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    return str(version.version)


def _populate(settings: Settings) -> tuple[str, float]:
    """Budget, a DP popularity release, two trainings (one committed + registered, one released)."""
    version = _register_version(settings)
    ledger = open_ledger(settings)
    ledger.ensure_budget("events", epsilon_cap=10.0, delta=DELTA, period_days=365)
    common = {"scope": "events", "n_users": 800, "code_version": "abc", "data_hash": "sha256:x"}
    ledger.reserve(
        run_id="scheduled__2026-02-01",
        mechanism=GaussianCountMechanism(sigma=30.0, l2_sensitivity=4.0),
        data_window=JANUARY,
        purpose="popularity",
        **common,  # type: ignore[arg-type]
    )
    charge = ledger.reserve(
        run_id="scheduled__2026-02-01",
        mechanism=DpSgdMechanism(1.2, 0.02, 400, 1.0, 20),
        data_window=JANUARY,
        purpose="train_recommender",
        **common,  # type: ignore[arg-type]
    )
    charge = ledger.commit(charge.id, model_version=version, artifact_uri=f"models:/shoprec/{version}")
    failed = ledger.reserve(
        run_id="scheduled__2026-03-01",
        mechanism=DpSgdMechanism(1.2, 0.02, 400, 1.0, 20),
        data_window=FEBRUARY,
        purpose="train_recommender",
        **common,  # type: ignore[arg-type]
    )
    ledger.release(failed.id)
    statement = PrivacyStatement.from_charge(charge, secure_rng=False)
    attach_to_model_version(
        statement,
        tracking_uri=settings.resolved_mlflow_tracking_uri,
        registry_uri=settings.resolved_mlflow_registry_uri,
        model_name=settings.registered_model_name,
        version=version,
        ledger_anchor=ledger.anchor(),
    )
    ledger.close()
    rng = np.random.default_rng(0)
    write_membership_losses(settings, version, rng.gamma(2, 1, 300), rng.gamma(2, 1, 300), delta=DELTA)
    audit_pending(settings)
    return version, charge.epsilon


def test_model_version_carries_its_statement_in_tags_and_artifact(shoprec_home: Settings) -> None:
    from mlflow import MlflowClient

    version, epsilon = _populate(shoprec_home)
    client = MlflowClient(
        shoprec_home.resolved_mlflow_tracking_uri, shoprec_home.resolved_mlflow_registry_uri
    )
    model_version = client.get_model_version(shoprec_home.registered_model_name, version)
    assert float(model_version.tags["privacy.epsilon"]) == pytest.approx(epsilon)
    assert model_version.tags["privacy.delta"] == "1e-05"
    assert model_version.tags["privacy.secure_rng"] == "false"
    local = Path(client.download_artifacts(model_version.run_id, STATEMENT_ARTIFACT))
    assert PrivacyStatement.from_json(local.read_text()).ledger_charge_id == 2
    # the ledger's head after the commits (1 budget, 3 charges, 5 events) is anchored beside the statement
    anchor = json.loads(model_version.tags[ANCHOR_TAG])
    assert {name: h["rows"] for name, h in anchor["tables"].items()} == {
        "privacy_budgets": 1,
        "privacy_charges": 3,
        "privacy_charge_events": 5,
    }
    logged = json.loads(Path(client.download_artifacts(model_version.run_id, ANCHOR_ARTIFACT)).read_text())
    assert logged == anchor


def test_report_shows_budget_statement_and_audit(shoprec_home: Settings) -> None:
    version, epsilon = _populate(shoprec_home)
    result = CliRunner().invoke(app, ["report", "--at", AT])
    assert result.exit_code == 0, result.output
    folder = shoprec_home.reports_dir / "privacy" / "20260302T000000Z"
    data = json.loads((folder / "privacy_report.json").read_text())
    (budget,) = data["budgets"]
    assert (budget["epsilon_cap"], budget["delta"], budget["unit"]) == (10.0, DELTA, "user")
    assert budget["charges_counted"] == [1, 2]  # the released charge 3 costs nothing
    assert budget["remaining_epsilon"] == pytest.approx(10.0 - budget["spent_epsilon"])
    (model,) = data["models"]
    assert model["model_version"] == version
    assert model["statement"]["epsilon"] == pytest.approx(epsilon)
    assert model["statement"]["secure_rng"] is False
    assert model["statement"]["source"] == "mlflow registry tags and privacy ledger"
    assert abs(model["audit"]["auc"] - 0.5) < 0.1
    # the model version's anchor in MLflow, and the head anchor of every write of the pipeline's ledger
    heads = list((shoprec_home.privacy_dir / "anchors").glob("head-*.json"))
    assert len(heads) == 6  # budget, 3 reservations, the commit and the release
    assert data["verification"]["anchors_checked"] == 1 + len(heads)
    assert data["ledger_anchor"]["tables"]["privacy_charges"]["rows"] == 3  # this report anchors the head
    markdown = (folder / "privacy_report.md").read_text()
    assert "Verification with dp_accounting-rdp: **passed**" in markdown
    assert "Ledger anchor (chain heads recorded in this report" in markdown
    assert f"### Model version {version}" in markdown
    assert "is a lower bound" in markdown
    assert "data:image/png;base64," in (folder / "privacy_report.html").read_text()
