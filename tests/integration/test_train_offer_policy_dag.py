"""train_offer_policy through real Airflow (``dag.test()``), GX, Opacus, OpenDP, the ledger and MLflow.

Two simulated campaigns on the default shop (1,500 customers, 40,000 logged decisions each), each in
its own SHOPREC_HOME, whose best policy is known from the simulator's truth:

* **uniform logging** (true value 2.778 per customer, offering to nobody 2.682): a policy learned from
  the log is worth more than the running one, and the gate promotes it;
* **logging by a near-oracle** (the oracle's best action, 20% uniform exploration: true value about
  5.41): no policy the reward model can learn beats it, and the gate refuses.

Training at epsilon 8 and the release at epsilon 4 (user level, ledger-charged, each run's own ledger).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_settings import only_shoprec_env

from tasks.campaigns.demo import land_campaign
from tasks.config import Settings, get_settings
from tasks.sources.synthetic import SyntheticConfig

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "train_offer_policy.py"
INGEST_DAG_FILE = DAG_FILE.with_name("ingest_campaigns.py")
DAY = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, airflow_home: Path) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    out: dict[str, Any] = {}
    for logging in ("uniform", "near_oracle"):
        env = {
            "SHOPREC_HOME": str(tmp_path_factory.mktemp(logging) / "shoprec"),
            "SHOPREC_PRIVACY_EPSILON_CAP": "20",
            "SHOPREC_OFFER_TRAINING_EPSILON": "8",
            "SHOPREC_OFFER_RELEASE_EPSILON": "4",
        }
        with pytest.MonkeyPatch.context() as mp:
            only_shoprec_env(mp, env)
            settings = get_settings()
            # the demo's own landing (tasks.campaigns.demo), then ingest_campaigns (pseudonymised lake)
            truth = land_campaign(
                settings, shop=SyntheticConfig(), day=DAY, n_decisions=40_000, logging=logging, seed=1
            )
            conf = {"days": [DAY.date().isoformat()]}
            ingest = DagBag(dag_folder=str(INGEST_DAG_FILE))
            assert ingest.import_errors == {}
            ingested = ingest.get_dag("ingest_campaigns").test(run_conf=conf)
            assert str(ingested.state) == "success"
            bag = DagBag(dag_folder=str(DAG_FILE))
            assert bag.import_errors == {}
            run = bag.get_dag("train_offer_policy").test(run_conf=conf)
            # read now: a later dag.test() of the same logical date replaces this run in Airflow's DB
            states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
            out[logging] = {"settings": settings, "states": states, "truth": truth}
    return out


def _version(settings: Settings) -> Any:
    from tasks.registry import client

    versions = client(settings).search_model_versions(f"name = '{settings.offer_registered_model_name}'")
    assert len(versions) == 1
    return versions[0]


def _alias(settings: Settings, alias: str) -> str | None:
    import mlflow

    from tasks.registry import client

    try:
        return str(
            client(settings).get_model_version_by_alias(settings.offer_registered_model_name, alias).version
        )
    except mlflow.exceptions.MlflowException:
        return None


@pytest.mark.parametrize("logging", ["uniform", "near_oracle"])
def test_every_task_succeeds(runs: dict[str, Any], logging: str) -> None:
    states = runs[logging]["states"]
    assert len(states) == 7
    assert set(states.values()) == {"success"}


def test_policy_learned_from_uniform_logging_is_promoted(runs: dict[str, Any]) -> None:
    settings = runs["uniform"]["settings"]
    assert runs["uniform"]["truth"] == pytest.approx(2.778, abs=1e-3)
    tags = _version(settings).tags
    assert tags["gate.decision"] == "promoted", tags["gate.reasons"]
    assert float(tags["gate.candidate_incremental_low"]) > float(tags["gate.running_incremental"])
    assert _alias(settings, "champion") == "1"
    assert _alias(settings, "challenger") == "1"


def test_near_oracle_running_policy_is_not_replaced(runs: dict[str, Any]) -> None:
    settings = runs["near_oracle"]["settings"]
    assert runs["near_oracle"]["truth"] > 5.0  # a learned policy (about 3.9 at best here) cannot beat it
    tags = _version(settings).tags
    assert tags["gate.decision"] == "rejected"
    assert "does not beat the running policy" in tags["gate.reasons"]
    assert _alias(settings, "champion") is None
    assert _alias(settings, "challenger") == "1"


@pytest.mark.parametrize("logging", ["uniform", "near_oracle"])
def test_training_and_release_are_each_charged_once_and_the_ledger_verifies(
    runs: dict[str, Any], logging: str
) -> None:
    from tasks.privacy import Ledger
    from tasks.privacy.verify import verify_settings

    settings = runs[logging]["settings"]
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        charges = ledger.charges(settings.privacy_scope)
    finally:
        ledger.close()
    published = [("offer_exposure_report", "committed")] if logging == "uniform" else []
    assert sorted((c.purpose, str(c.status)) for c in charges) == sorted(
        [("offer_ope_release", "committed"), ("offer_reward_dp_sgd", "committed"), *published]
    )
    epsilons = {c.purpose: c.epsilon for c in charges}
    assert 7.5 < epsilons["offer_reward_dp_sgd"] <= 8.0 + 1e-6
    assert epsilons["offer_ope_release"] == pytest.approx(4.0, rel=1e-3)
    tags = _version(settings).tags
    assert float(tags["privacy.training_epsilon"]) == pytest.approx(epsilons["offer_reward_dp_sgd"], abs=1e-4)
    assert tags["privacy.unit"] == "user"
    assert verify_settings(settings).ok


def test_promoted_policy_is_published_and_shoprec_offer_reads_it(runs: dict[str, Any]) -> None:
    """Every customer of the uniform campaign gets an offer under version 1 through ``offers_v1``; the
    CLI prints it for the raw customer id (pseudonymised as ``shoprec recommend`` does) and for the
    pseudonym; the refused policy published nothing."""
    from typer.testing import CliRunner

    from tasks.campaigns.serving import NoOffer, offer_for
    from tasks.cli import app
    from tasks.sources.synthetic import shop_customers

    settings = runs["uniform"]["settings"]
    customers = pd.read_parquet(settings.campaigns_dir / "customers.parquet")["user_id"]
    raw = str(shop_customers(SyntheticConfig()).user_id[0])
    assert raw not in set(customers)  # the campaign's tables hold pseudonyms only
    offer = offer_for(settings, raw)
    assert offer.user_id == customers.iloc[0]
    assert offer_for(settings, str(customers.iloc[0])) == offer
    assert offer.model_version == "1"
    assert offer.offer_id in {"no_offer", "pct10", "amt5", "free_ship", "promo_home"}
    assert 0.9 < offer.probability <= 1.0  # greedy with 10% exploration over 5 actions: 0.92
    published = pd.read_parquet(next((settings.features_dir / "user_offers").glob("*.parquet")))
    assert len(published) == len(customers)
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {"SHOPREC_HOME": str(settings.home)})
        result = CliRunner().invoke(app, ["offer", raw])
        unknown = CliRunner().invoke(app, ["offer", "nobody-like-this"])
    assert result.exit_code == 0, result.output
    assert f"{offer.offer_id} (policy probability 0.92" in result.output
    assert unknown.exit_code == 1
    with pytest.raises(NoOffer, match="not registered"):
        offer_for(runs["near_oracle"]["settings"], str(customers.iloc[0]))


def test_exposure_report_is_released_with_the_published_decisions(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    """The promoted run's DP exposure report (country and recency band) is the artifact of its MLflow
    run; its customer counts add up to about the 1,500 customers; shares per group sum to about 1."""
    import json

    from tasks.campaigns import exposure
    from tasks.registry import client

    settings = runs["uniform"]["settings"]
    version = _version(settings)
    local = client(settings).download_artifacts(version.run_id, "exposure/exposure.json", str(tmp_path))
    report = json.loads(Path(local).read_text())
    assert [r["group"] for r in report["by"]["country"]] == ["United Kingdom", "other"]
    assert [r["group"] for r in report["by"]["recency"]] == list(exposure.RECENCY_BANDS)
    noise = report["noise_scale_customers"]
    for grouping in exposure.GROUPINGS:
        rows = report["by"][grouping]
        assert abs(sum(r["customers"] for r in rows) - 1500) <= 5 * noise * len(rows) ** 0.5 + len(rows)
        for row in rows:
            if row["customers"] > 100:
                # k noisy share sums over a noisy count: within 5 noise scales of 1 (relative to the group)
                k = len(row["actions"])
                shares = sum(a["share"] for a in row["actions"].values())
                assert abs(shares - 1.0) <= 5 * noise * (k**0.5 + 1) / row["customers"], (grouping, row)
    assert report["epsilon"] == pytest.approx(settings.offer_exposure_epsilon, rel=1e-3)
    assert not list(run_folder_of(runs["near_oracle"]["settings"]).glob("offer_exposure_report-*"))


def test_demo_prints_the_round(runs: dict[str, Any]) -> None:
    """What ``make run`` prints about the round, read back from the stores: the gate's decision, the
    released estimates with their guarantee, customers' action probabilities, the exposure report."""
    from tasks.campaigns.demo import round_lines

    text = "\n".join(round_lines(runs["uniform"]["settings"]))
    assert "version 1, gate promoted" in text
    assert "released estimates per customer, (4, " in text
    assert "accountant opacus-rdp" in text
    assert "dr:candidate-nobody: " in text
    assert text.count("no_offer 0.") >= 3  # three customers' probabilities
    assert "exposure of the published decisions (0.5, " in text
    assert "country United Kingdom (~" in text
    assert "recency under 1 month (~" in text
    refused = "\n".join(round_lines(runs["near_oracle"]["settings"]))
    assert "gate rejected" in refused
    assert "no exposure report" in refused


def run_folder_of(settings: Settings) -> Path:
    from tasks.campaigns.contracts import run_folder
    from tasks.campaigns.demo import latest_version

    version = latest_version(settings)
    assert version is not None
    return run_folder(settings, version.tags["shoprec.run_key"])
