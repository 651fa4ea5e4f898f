"""The stages of the ``train_offer_policy`` DAG, one function per task (files keyed on the run).

validate the exposures of the run's window -> train the user-level DP reward model (ledger charge) ->
build the candidate policy -> off-policy estimates of candidate, running (logging) policy, nobody and
everybody (inside the trust boundary) -> DP release of the estimates (its own ledger charge) -> gate
on the released values only -> register the policy in MLflow with the decision's tags.

Inputs: the lake's offers and exposures partitions (``lake/campaigns/{offers,exposures}/date=D/``,
written by :mod:`tasks.campaigns.ingest` from landing) and, under ``Settings.campaigns_dir``,
``customers.parquet`` (``user_id`` and :data:`~tasks.campaigns.simulator.FEATURE_NAMES` per customer;
a stand-in until the Feast point-in-time features exist).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from tasks.campaigns import dp_reward, ope, release
from tasks.campaigns.contracts import NO_OFFER, run_folder
from tasks.campaigns.exposure import exposure_report
from tasks.campaigns.ingest import offers_in_force, read_lake_exposures
from tasks.campaigns.policy import OfferPolicy
from tasks.campaigns.reward import RewardModel
from tasks.campaigns.serving import publish_offers
from tasks.campaigns.simulator import FEATURE_NAMES
from tasks.campaigns.validation import validate_exposures, validate_offers
from tasks.code_version import code_version
from tasks.config import Settings
from tasks.io import run_days
from tasks.permissions import private_dir

log = logging.getLogger(__name__)

POLICIES: Final = ("candidate", "running", "nobody", "everybody")
GATE_ESTIMATOR: Final = "dr"
CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
EXPERIMENT: Final = "shoprec-offers"


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    private_dir(path.parent)
    staging = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(staging, index=False)
    staging.replace(path)


# --- validate -----------------------------------------------------------------------------------------
def window_end(
    conf: dict[str, Any] | None, asset_extras: list[dict[str, Any]], data_interval_end: dt.datetime | None
) -> dt.datetime:
    """The end of a run's exposure window: midnight after the last day the run conf (``{"days": [...]}``)
    or the triggering ``exposures`` events name (:func:`tasks.io.run_days`), else the data interval's end."""
    days = run_days(conf, asset_extras)
    if days:
        return dt.datetime.combine(days[-1] + dt.timedelta(days=1), dt.time(), dt.UTC)
    if data_interval_end is None:
        raise ValueError(
            "train_offer_policy: no days in the run conf or the triggering events, no data interval"
        )
    return dt.datetime.fromtimestamp(data_interval_end.timestamp(), tz=dt.UTC)


def validate_log(settings: Settings, run_key: str, end: dt.datetime) -> dict[str, Any]:
    """Gate the lake's exposures of ``[end - offer_log_days, end)`` (written by
    :mod:`tasks.campaigns.ingest`) against the offers in force at the window's last day; clean rows go
    to the run's folder."""

    start = end - dt.timedelta(days=settings.offer_log_days)
    last = (end - dt.timedelta(microseconds=1)).date()
    in_force = offers_in_force(settings, last)
    if in_force is None:
        raise FileNotFoundError(f"no offers in the lake on or before {last.isoformat()}")
    offers = validate_offers(in_force, settings=settings)
    exposures = read_lake_exposures(settings, start.date(), last)
    if exposures.empty:
        raise FileNotFoundError(
            f"no exposures in the lake between {start.isoformat()} and {end.isoformat()} "
            "(run ingest_campaigns first)"
        )
    stamps = exposures["decision_timestamp"]
    exposures = exposures[(stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))]
    gate = validate_exposures(exposures, offers["offer_id"], settings=settings)
    if gate.clean.empty:
        raise ValueError(f"no valid exposures between {start.isoformat()} and {end.isoformat()}")
    folder = run_folder(settings, run_key)
    _write_parquet(gate.clean, folder / "exposures.parquet")
    _write_parquet(offers, folder / "offers.parquet")
    return {
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "rows": len(gate.clean),
        "quarantined": len(gate.quarantined),
        "reasons": gate.reason_counts,
    }


@dataclass(frozen=True)
class RunLog:
    """The run's gated exposures as arrays, with each decision's customer features."""

    actions: tuple[str, ...]
    exposures: pd.DataFrame
    decisions: ope.LoggedDecisions
    user_ids: np.ndarray
    features: np.ndarray
    customers: pd.DataFrame


def read_run_log(settings: Settings, run_key: str) -> RunLog:
    folder = run_folder(settings, run_key)
    exposures = pd.read_parquet(folder / "exposures.parquet")
    offers = pd.read_parquet(folder / "offers.parquet")
    actions = (NO_OFFER, *offers["offer_id"].astype(str))
    customers = pd.read_parquet(settings.campaigns_dir / "customers.parquet")
    missing = sorted(set(exposures["user_id"]) - set(customers["user_id"]))
    if missing:
        raise ValueError(f"{len(missing)} customers of the exposures have no features, e.g. {missing[:3]}")
    rows = customers.set_index("user_id").loc[exposures["user_id"], list(FEATURE_NAMES)]
    return RunLog(
        actions=actions,
        exposures=exposures,
        decisions=ope.LoggedDecisions.from_exposures(exposures, actions),
        user_ids=exposures["user_id"].astype(str).to_numpy(),
        features=rows.to_numpy(dtype=np.float64),
        customers=customers,
    )


def _window(validated: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime.fromisoformat(validated["window_start"]), dt.datetime.fromisoformat(
        validated["window_end"]
    )


# --- train and build -------------------------------------------------------------------------------
def train_reward(settings: Settings, run_key: str, validated: dict[str, Any]) -> dict[str, Any]:
    """The DP-SGD reward model at ``offer_training_epsilon`` (user level, ledger-charged)."""

    run = read_run_log(settings, run_key)
    config = dp_reward.DpRewardConfig()
    examples = dp_reward.group_by_user(
        run.user_ids, run.features, run.decisions.actions, run.decisions.rewards, config.cap_k
    )
    trained = dp_reward.train_charged(
        settings,
        run_key=run_key,
        examples=examples,
        n_actions=len(run.actions),
        data_window=_window(validated),
        epsilon=settings.offer_training_epsilon,
        config=config,
        code_version=code_version(),
    )
    return trained.summary()


def build_candidate(settings: Settings, run_key: str, trained: dict[str, Any]) -> dict[str, Any]:
    """The candidate policy's exact action probabilities for every customer (``candidate.parquet``)."""
    from tasks.campaigns.dp_reward import load_model

    run = read_run_log(settings, run_key)
    policy = OfferPolicy(load_model(Path(trained["model_path"])), epsilon=settings.offer_exploration)
    probs = policy.probabilities(run.customers[list(FEATURE_NAMES)].to_numpy(dtype=np.float64))
    frame = pd.DataFrame(probs, columns=list(run.actions))
    frame.insert(0, "user_id", run.customers["user_id"].astype(str).to_numpy())
    path = run_folder(settings, run_key) / "candidate.parquet"
    _write_parquet(frame, path)
    return {
        "path": str(path),
        "actions": list(run.actions),
        "customers": len(frame),
        "model_path": trained["model_path"],
    }


# --- evaluate and release ------------------------------------------------------------------------------
def policy_probabilities(run: RunLog, candidate: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each evaluated policy's probabilities per decision (the running policy is the logging one)."""
    n, k = run.decisions.n, len(run.actions)
    nobody = np.zeros((n, k))
    nobody[:, 0] = 1.0
    everybody = np.full((n, k), 1.0 / (k - 1))
    everybody[:, 0] = 0.0
    chosen = candidate.set_index("user_id").loc[run.user_ids, list(run.actions)].to_numpy(dtype=np.float64)
    return {"candidate": chosen, "nobody": nobody, "everybody": everybody}


def estimate_terms(run: RunLog, candidate: pd.DataFrame, reward_model: RewardModel) -> dict[str, np.ndarray]:
    """Per-decision terms of every released quantity: ``{ips,dr}:{policy}``, ``{ips,dr}:{candidate,
    running}-nobody`` and ``ips:candidate_cost`` (redemption cost per customer under the candidate).

    The running policy is the logging policy: its value is the mean logged reward (weight 1). DR's
    reward model is the run's user-level DP reward model: a decision's terms then depend on that
    decision's user and on DP outputs only, which the release's per-user sensitivity requires (a
    reward model fitted non-privately on everybody's decisions would let one user move every other
    user's DR terms; ``tests/adversarial/test_campaign_attacks.py``).
    """
    d = run.decisions
    probs = policy_probabilities(run, candidate)
    predicted = reward_model.predict(run.features)
    out: dict[str, np.ndarray] = {}
    for est in ("ips", "dr"):
        per = {name: ope.terms(est, d, p, predicted) for name, p in probs.items()}
        per["running"] = d.rewards
        for name in POLICIES:
            out[f"{est}:{name}"] = per[name]
        out[f"{est}:candidate-nobody"] = per["candidate"] - per["nobody"]
        out[f"{est}:running-nobody"] = per["running"] - per["nobody"]
    cost = run.exposures["redemption_cost"].to_numpy(dtype=float)
    out["ips:candidate_cost"] = d.weights(probs["candidate"]) * cost
    return out


def evaluate_policies(settings: Settings, run_key: str, built: dict[str, Any]) -> dict[str, Any]:
    """IPS, SNIPS and DR of each policy with intervals, kept inside the trust boundary
    (``evaluation.json``), and the per-decision terms the DP release reads (``terms.npz``)."""
    from tasks.campaigns.dp_reward import load_model

    run = read_run_log(settings, run_key)
    candidate = pd.read_parquet(built["path"])
    terms = estimate_terms(run, candidate, load_model(Path(built["model_path"])))
    probs = policy_probabilities(run, candidate)
    internal = {f"snips:{name}": asdict(ope.snips(run.decisions, p)) for name, p in probs.items()} | {
        name: {"value": float(t.mean()), "n": len(t)} for name, t in terms.items()
    }
    folder = run_folder(settings, run_key)
    (folder / "evaluation.json").write_text(json.dumps(internal, sort_keys=True))
    staging = folder / ".terms.npz"
    with staging.open("wb") as handle:
        arrays: dict[str, Any] = {"user_ids": run.user_ids.astype(str), **terms}
        np.savez(handle, **arrays)
    staging.replace(folder / "terms.npz")
    return {"path": str(folder / "terms.npz"), "quantities": list(terms)}


def release_estimates(
    settings: Settings, run_key: str, validated: dict[str, Any], evaluated: dict[str, Any]
) -> list[dict[str, Any]]:
    """The estimates as they may leave the trust boundary: DP at ``offer_release_epsilon`` (user level)."""

    with np.load(evaluated["path"], allow_pickle=False) as stored:
        user_ids = stored["user_ids"]
        terms = {name: stored[name] for name in evaluated["quantities"]}
    released = release.release_charged(
        settings,
        run_key=run_key,
        user_ids=user_ids,
        terms=terms,
        clip=settings.offer_release_clip,
        epsilon=settings.offer_release_epsilon,
        data_window=_window(validated),
        data_hash=f"rows:{validated['rows']}:{validated['window_start']}:{validated['window_end']}",
        code_version=code_version(),
    )
    return [asdict(r) for r in released]


# --- gate and register ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OfferGate:
    """The promotion decision, from DP-released estimates only."""

    promote: bool
    candidate_gain_low: float
    running_gain: float
    daily_cost: float
    daily_budget: float
    reasons: tuple[str, ...]

    def to_tags(self) -> dict[str, str]:
        return {
            "gate.decision": "promoted" if self.promote else "rejected",
            "gate.candidate_incremental_low": f"{self.candidate_gain_low:.4f}",
            "gate.running_incremental": f"{self.running_gain:.4f}",
            "gate.daily_cost": f"{self.daily_cost:.2f}",
            "gate.daily_budget": f"{self.daily_budget:.2f}",
            "gate.reasons": "; ".join(self.reasons),
        }


def decide(settings: Settings, released: list[dict[str, Any]]) -> OfferGate:
    """Promote when the lower bound of the candidate's incremental profit per customer (over offering
    to nobody, DR, DP-released) beats the running policy's released incremental profit, and the
    candidate's expected redemption cost for ``offer_daily_audience`` customers fits the daily budget."""
    by_name = {row["name"]: row for row in released}
    gain = by_name[f"{GATE_ESTIMATOR}:candidate-nobody"]
    running = by_name[f"{GATE_ESTIMATOR}:running-nobody"]
    daily_cost = max(by_name["ips:candidate_cost"]["value"], 0.0) * settings.offer_daily_audience
    beats = gain["low"] > running["value"]
    affordable = daily_cost <= settings.offer_daily_cost_budget
    reasons = (
        f"candidate incremental profit per customer {gain['value']:.3f} (lower {gain['level']:.0%} bound "
        f"{gain['low']:.3f}) {'beats' if beats else 'does not beat'} the running policy's {running['value']:.3f}",
        f"expected redemption cost {daily_cost:.0f} per day for {settings.offer_daily_audience} customers "
        f"{'within' if affordable else 'over'} the budget {settings.offer_daily_cost_budget:.0f}",
        f"DP-released estimates ({GATE_ESTIMATOR}): ({gain['epsilon']:.3g}, {gain['delta']:.2e})-DP per "
        f"{gain['unit']}, accountant {gain['accountant']}",
    )
    return OfferGate(
        beats and affordable,
        gain["low"],
        running["value"],
        daily_cost,
        settings.offer_daily_cost_budget,
        reasons,
    )


def _experiment_id(client: Any, settings: Settings) -> str:
    existing = client.get_experiment_by_name(EXPERIMENT)
    if existing is not None:
        return str(existing.experiment_id)
    private_dir(settings.mlflow_artifact_root)
    return str(client.create_experiment(EXPERIMENT, artifact_location=settings.mlflow_artifact_root.as_uri()))


def register_policy(
    settings: Settings,
    run_key: str,
    trained: dict[str, Any],
    released: list[dict[str, Any]],
) -> dict[str, Any]:
    """Log the run (DP-released metrics only), register the policy (alias ``challenger``), tag the
    gate's decision and privacy, and move ``champion`` when promoted.  Idempotent on ``run_key``."""
    import mlflow

    from tasks.registry import client as mlflow_client

    client = mlflow_client(settings)
    name = settings.offer_registered_model_name
    decision = decide(settings, released)
    found = client.search_model_versions(f"name = '{name}' and tag.shoprec.run_key = '{run_key}'")
    if found:
        version = str(max(int(v.version) for v in found))
    else:
        metrics = {
            f"{r['name'].replace(':', '.')}.{k}": r[k] for r in released for k in ("value", "low", "high")
        }
        with mlflow.start_run(
            experiment_id=_experiment_id(client, settings), run_name=f"offers-{run_key}"
        ) as run:
            mlflow.set_tag("shoprec.run_key", run_key)
            mlflow.log_params({k: str(trained[k]) for k in ("epsilon", "delta", "noise_multiplier", "steps")})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "policy"
                folder.mkdir()
                model = Path(trained["model_path"])
                for path in (model, model.with_suffix(".json")):
                    (folder / path.name).write_bytes(path.read_bytes())
                (folder / "policy.json").write_text(
                    json.dumps({"exploration": settings.offer_exploration, "rule": "greedy"}, sort_keys=True)
                )
                mlflow.log_artifacts(str(folder), "policy")
            source = f"{run.info.artifact_uri}/policy"
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        gain = next(r for r in released if r["name"] == f"{GATE_ESTIMATOR}:candidate-nobody")
        tags = {
            "shoprec.run_key": run_key,
            "privacy.unit": "user",
            "privacy.accountant": str(trained["accountant"]),
            "privacy.training_epsilon": f"{trained['epsilon']:.4f}",
            "privacy.delta": f"{trained['delta']:.3e}",
            "privacy.training_charge_id": str(trained["charge_id"]),
            "privacy.release_epsilon": f"{gain['epsilon']:.4f}",
        }
        version = str(client.create_model_version(name, source, run_id=run.info.run_id, tags=tags).version)
        client.set_registered_model_alias(name, CHALLENGER, version)
    for key, value in decision.to_tags().items():
        client.set_model_version_tag(name, version, key, value[:5000])
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("offer policy %s version %s: %s", name, version, "; ".join(decision.reasons))
    return {"version": version, "promoted": decision.promote, "reasons": list(decision.reasons)}


def publish_if_promoted(
    settings: Settings, run_key: str, registration: dict[str, Any], at: dt.datetime
) -> int:
    """Publish the promoted policy's offers to Feast (``offers_v1``); 0 when the gate refused."""
    if not registration["promoted"]:
        log.info("offer policy version %s not promoted: nothing published", registration["version"])
        return 0

    published = publish_offers(settings, run_key, str(registration["version"]), at)
    report_exposure(settings, run_key, str(registration["version"]), at)
    return published


def report_exposure(settings: Settings, run_key: str, version: str, at: dt.datetime) -> dict[str, Any]:
    """The DP exposure report of the published decision set (:mod:`tasks.campaigns.exposure`), logged
    as the artifact ``exposure/exposure.json`` of the version's MLflow run.  Idempotent on ``run_key``."""
    from tasks.registry import client as mlflow_client

    folder = run_folder(settings, run_key)
    report = exposure_report(
        settings,
        run_key=run_key,
        candidate=pd.read_parquet(folder / "candidate.parquet"),
        customers=pd.read_parquet(settings.campaigns_dir / "customers.parquet"),
        offers=pd.read_parquet(folder / "offers.parquet"),
        data_window=(at - dt.timedelta(days=settings.offer_log_days), at),
        code_version=code_version(),
    )
    client = mlflow_client(settings)
    run_id = client.get_model_version(settings.offer_registered_model_name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exposure.json"
        path.write_text(json.dumps(report, sort_keys=True, indent=1))
        client.log_artifact(run_id, str(path), "exposure")
    return report
