"""MLflow: one run per training, the model as a pyfunc with a signature, aliases and the promotion gate.

A training run logs parameters, metrics (evaluation of the challenger and the baselines), the
evaluation report, the privacy statement (tags ``privacy.*`` and an artifact, via
``tasks.privacy.attach_to_model_version``) and the model. The registered version gets the alias
``challenger``; :func:`decide_promotion` compares it with the ``champion`` and with the strongest
non-private baseline (``GATE_BASELINES``) on the same evaluation data, and :func:`apply_decision`
moves ``champion`` (aliases only, never the deprecated stages) and writes the decision and its reasons
to the version's tags.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from tasks.artifacts import fetch
from tasks.baselines import broadcast, buy_again_scores, cooccurrence_scores, popularity_counts
from tasks.catalog import USER_FEATURE_COLUMNS
from tasks.config import Settings
from tasks.contracts import format_day_ranges, list_partitions
from tasks.dataset import feature_state, users_before
from tasks.evaluation import evaluate_scores, retention, temporal_split_from_state
from tasks.features import snapshot_time
from tasks.model import Recommender, load_recommender, save_recommender
from tasks.permissions import private_sqlite
from tasks.privacy import PrivacyStatement, attach_to_model_version
from tasks.privacy.ledger_key import open_ledger
from tasks.training_data import fetch_training_data, pinned_days

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHALLENGER: Final = "challenger"
CHAMPION: Final = "champion"
GATE_METRIC: Final = "ndcg@10"
MODEL_ARTIFACT: Final = "model"
# What a refit version's DP-SGD charge covers (its privacy statement, docs/privacy.md)
REFIT_TRAININGS: Final = (
    "this charge covers two DP-SGD trainings at this noise multiplier: the model trained before the "
    "validation cut (kept as the version's gate_model: it tuned the blend and the gate evaluated it; never "
    "published) and the served refit on every user's latest window up to the data's end; sample rate = the "
    "larger of their two, steps = the sum of theirs (a bound of their composition under RDP)"
)
GATE_ARTIFACT: Final = "gate_model"  # a refit version's model trained before its validation cut
# The gate's baselines: the non-private rankers evaluation_reports computes on the run's test split,
# what the shop would ship instead of the private model (DP popularity is part of the model's blend).
GATE_BASELINES: Final = ("popularity_all", "popularity_recent", "buy_again", "cooccurrence")


# --- the MLflow pyfunc ----------------------------------------------------------------------------
def _python_model_class() -> type:
    import mlflow.pyfunc

    class RecommenderModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
        """Given a user's features and history, return the top-K item ids and scores."""

        def load_context(self, context: Any) -> None:
            self.recommender = load_recommender(Path(context.artifacts["recommender"]))

        def predict(
            self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
        ) -> pd.DataFrame:
            k = int((params or {}).get("k", 10))
            frame = model_input.copy()
            for col in ("recent_items", "purchased_items", "purchased_counts"):
                if col in frame:
                    frame[col] = frame[col].map(lambda v: list(v) if v is not None else [])
            top = self.recommender.recommend(frame, k)
            return pd.DataFrame({"item_ids": [ids for ids, _ in top], "scores": [s for _, s in top]})

    return RecommenderModel


def example_input(recommender: Recommender) -> pd.DataFrame:
    """One illustrative input row (user features, history and own purchases)."""
    row: dict[str, Any] = {c: 0.0 for c in USER_FEATURE_COLUMNS}
    row["days_since_last_purchase"] = -1.0
    first = recommender.item_ids[0]
    row.update(recent_items=[first], purchased_items=[first], purchased_counts=[1])
    return pd.DataFrame([row])


def model_signature() -> Any:
    """Input: a user's features, ``recent_items`` and own ``purchased_items``/``purchased_counts``;
    output: ``item_ids`` and ``scores`` of the top ``k`` (a parameter, default 10)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs: list[Any] = [ColSpec(DataType.double, c, required=False) for c in USER_FEATURE_COLUMNS]
    inputs += [
        ColSpec(Array(DataType.string), "recent_items"),
        ColSpec(Array(DataType.string), "purchased_items", required=False),
        ColSpec(Array(DataType.long), "purchased_counts", required=False),
    ]
    outputs: list[Any] = [
        ColSpec(Array(DataType.string), "item_ids"),
        ColSpec(Array(DataType.double), "scores"),
    ]
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("k", DataType.long, 10)]),
    )


# --- logging a training run -----------------------------------------------------------------------
@dataclass(frozen=True)
class RegisteredModel:
    """Where a training run and its model version live."""

    run_id: str
    name: str
    version: str
    model_uri: str  # models:/name/version
    artifact_uri: str


def client(settings: Settings) -> MlflowClient:
    import mlflow

    private_sqlite(settings.resolved_mlflow_tracking_uri)  # the embedded store: 0600 in a 0700 folder
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_mlflow_registry_uri)
    return mlflow.MlflowClient(settings.resolved_mlflow_tracking_uri, settings.resolved_mlflow_registry_uri)


def _experiment_id(settings: Settings, mlflow_client: MlflowClient) -> str:
    existing = mlflow_client.get_experiment_by_name(settings.experiment_name)
    if existing is not None:
        return str(existing.experiment_id)
    settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    return str(
        mlflow_client.create_experiment(
            settings.experiment_name, artifact_location=settings.mlflow_artifact_root.as_uri()
        )
    )


def find_run(settings: Settings, run_key: str) -> RegisteredModel | None:
    """The version already registered for ``run_key`` (the Airflow run id), for idempotent retries."""
    mlflow_client = client(settings)
    versions = mlflow_client.search_model_versions(
        f"name = '{settings.registered_model_name}' and tag.shoprec.run_key = '{run_key}'"
    )
    if not versions:
        return None
    mv = max(versions, key=lambda v: int(v.version))
    run_id = str(mv.run_id)
    run = mlflow_client.get_run(run_id)
    return RegisteredModel(
        run_id=run_id,
        name=mv.name,
        version=str(mv.version),
        model_uri=f"models:/{mv.name}/{mv.version}",
        artifact_uri=str(run.info.artifact_uri),
    )


def log_training(
    settings: Settings,
    recommender: Recommender,
    *,
    run_key: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    report: dict[str, Any],
    extra_tags: dict[str, str] | None = None,
    gate_model: Recommender | None = None,
) -> RegisteredModel:
    """Log one training as an MLflow run, register the model and give it the alias ``challenger``.

    ``gate_model``: the model the gate evaluated when the registered one is a refit that has seen the
    evaluation window (artifact ``gate_model``: a later gate compares its challenger with this one).
    Idempotent on ``run_key``: a retried task gets the version already registered for it.
    """
    import mlflow

    found = find_run(settings, run_key)
    if found is not None:
        return found
    mlflow_client = client(settings)
    experiment_id = _experiment_id(settings, mlflow_client)
    name = settings.registered_model_name
    signature = model_signature()
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_recommender(recommender, Path(tmp) / "recommender")
        artifacts = {"recommender": str(folder)}
        if gate_model is not None:
            artifacts[GATE_ARTIFACT] = str(save_recommender(gate_model, Path(tmp) / GATE_ARTIFACT))
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{run_key}") as run:
            mlflow.set_tag("shoprec.run_key", run_key)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
            mlflow.log_dict(report, "evaluation/report.json")
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=_python_model_class()(),
                artifacts=artifacts,
                signature=signature,
                input_example=(example_input(recommender), {"k": 10}),
            )
            artifact_uri = str(run.info.artifact_uri)
            run_id = run.info.run_id
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(Path(tmp) / GATE_ARTIFACT, ignore_errors=True)
    try:
        mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        mlflow_client.create_registered_model(name)
    # model_id: an MLflow 3 tracking server refuses a "models:/m-..." source without it.
    mv = mlflow_client.create_model_version(
        name,
        info.model_uri,
        run_id=run_id,
        tags={"shoprec.run_key": run_key, **(extra_tags or {})},
        model_id=info.model_id,
    )
    mlflow_client.set_registered_model_alias(name, CHALLENGER, str(mv.version))
    return RegisteredModel(
        run_id=run_id,
        name=name,
        version=str(mv.version),
        model_uri=f"models:/{name}/{mv.version}",
        artifact_uri=artifact_uri,
    )


def load_version(settings: Settings, version: str, *, for_gate: bool = False) -> Recommender:
    """The :class:`Recommender` of a registered version (downloads its artifacts).

    ``for_gate``: the model to compare on an evaluation window, i.e. the version's ``gate_model``
    (trained before its validation cut) when the served one is a refit up to its data's end; a version
    without one (no refit, or registered before refits) served the model its gate evaluated.
    """
    import mlflow

    client(settings)
    uri = f"models:/{settings.registered_model_name}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        gate = local / "artifacts" / GATE_ARTIFACT
        return load_recommender(gate if for_gate and gate.exists() else local / "artifacts" / "recommender")


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version holding ``alias``, or None."""
    import mlflow

    try:
        mv = client(settings).get_model_version_by_alias(settings.registered_model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return str(mv.version)


def load_champion(settings: Settings) -> tuple[Recommender, str]:
    """The current champion for batch scoring: (Recommender, version). Raises LookupError if none."""
    version = alias_version(settings, CHAMPION)
    if version is None:
        raise LookupError(f"registered model {settings.registered_model_name!r} has no {CHAMPION!r} alias")
    return load_version(settings, version), version


# --- the promotion gate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger becomes champion, and why."""

    promote: bool
    reasons: tuple[str, ...]
    challenger_version: str
    champion_version: str | None
    # (variant, name, NDCG@10) of the strongest baseline the challenger was compared with
    baselines: tuple[tuple[str, str, float], ...] = ()

    def to_tags(self) -> dict[str, str]:
        tags = {
            "gate.decision": "promoted" if self.promote else "rejected",
            "gate.reasons": "; ".join(self.reasons),
            "gate.compared_with": self.champion_version or "none",
        }
        for variant, name, value in self.baselines:
            tags[f"gate.baseline_{variant}"] = name
            tags[f"gate.baseline_{variant}_{GATE_METRIC.replace('@', '_at_')}"] = f"{value:.6g}"
        return tags


def privacy_within_policy(settings: Settings, tags: dict[str, str], n_users: int) -> list[str]:
    """Reasons the privacy statement (``privacy.*`` tags) breaks policy; empty when it is within it."""
    problems = []
    if tags.get("privacy.unit") != "user":
        problems.append(f"privacy unit is {tags.get('privacy.unit')!r}, policy requires 'user'")
    if not tags.get("privacy.accountant"):
        problems.append("no accountant named in the privacy statement")
    if not tags.get("privacy.ledger_charge_id"):
        problems.append("no ledger charge id in the privacy statement")
    try:
        epsilon, delta = float(tags["privacy.epsilon"]), float(tags["privacy.delta"])
    except (KeyError, ValueError):
        return [*problems, "privacy statement lacks epsilon or delta"]
    if epsilon > settings.privacy_epsilon_cap:
        problems.append(f"epsilon {epsilon:.4g} exceeds the cap {settings.privacy_epsilon_cap:.4g}")
    shipped = tags.get("privacy.epsilon_with_counts", "unrecorded")
    if shipped != "unrecorded" and float(shipped) > settings.privacy_epsilon_cap:
        problems.append(
            f"epsilon {float(shipped):.4g} with the count releases exceeds the cap "
            f"{settings.privacy_epsilon_cap:.4g}"
        )
    if n_users > 0 and delta > 1.0 / n_users:
        problems.append(f"delta {delta:.3g} exceeds 1/n_users = {1.0 / n_users:.3g}")
    return problems


def strongest_baseline(baselines: dict[str, dict[str, float]], variant: str) -> tuple[str, float]:
    """The name and value of the best baseline on ``variant`` (``baselines``: name -> variant -> value)."""
    name = max(sorted(baselines), key=lambda b: baselines[b][variant])
    return name, baselines[name][variant]


def decide_promotion(
    *,
    challenger_version: str,
    challenger: dict[str, float],
    champion_version: str | None,
    champion: dict[str, float] | None,
    baselines: dict[str, dict[str, float]],
    privacy_problems: list[str],
    tolerance: float,
) -> GateDecision:
    """The gate, on the same evaluation data: NDCG@10 per variant (``{"A": x, "B": y}``).

    Promote only if, in every variant, the challenger beats the strongest of ``baselines`` (name ->
    ``{"A": x, "B": y}``: what the shop would ship instead, e.g. buy again or recent popularity), is
    not worse than the champion by more than ``tolerance`` (the tolerance is for the champion only),
    and its privacy statement is within policy.
    """
    reasons, ok = [], True
    best_baselines = {}
    for variant, value in sorted(challenger.items()):
        name, base = strongest_baseline(baselines, variant)
        best_baselines[variant] = (name, base)
        if value > base:
            reasons.append(f"{variant}: {GATE_METRIC} {value:.4f} beats the best baseline {name} {base:.4f}")
        else:
            ok = False
            reasons.append(
                f"{variant}: {GATE_METRIC} {value:.4f} does not beat the best baseline {name} {base:.4f}"
            )
        if champion is not None:
            best = champion[variant]
            if value >= best - tolerance:
                reasons.append(f"{variant}: {value:.4f} within {tolerance:g} of champion {best:.4f}")
            else:
                ok = False
                reasons.append(
                    f"{variant}: {value:.4f} worse than champion {best:.4f} by more than {tolerance:g}"
                )
    if champion is None:
        reasons.append("no champion yet")
    if privacy_problems:
        ok = False
        reasons.extend(f"privacy: {p}" for p in privacy_problems)
    else:
        reasons.append("privacy statement within policy")
    return GateDecision(
        promote=ok,
        reasons=tuple(reasons),
        challenger_version=challenger_version,
        champion_version=champion_version,
        baselines=tuple((v, name, base) for v, (name, base) in sorted(best_baselines.items())),
    )


def apply_decision(settings: Settings, decision: GateDecision) -> bool:
    """Write the decision to the challenger's tags; move ``champion`` if promoted. Returns whether the
    champion changed."""
    mlflow_client = client(settings)
    name = settings.registered_model_name
    for key, value in decision.to_tags().items():
        mlflow_client.set_model_version_tag(name, decision.challenger_version, key, value[:5000])
    if not decision.promote or decision.champion_version == decision.challenger_version:
        return False
    mlflow_client.set_registered_model_alias(name, CHAMPION, decision.challenger_version)
    return True


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(client(settings).get_model_version(settings.registered_model_name, version).tags)


# --- the train_recommender registration step --------------------------------------------------------
@dataclass(frozen=True)
class RegistrationManifest:
    """What registration did: the version, the gate's decision, whether the champion changed."""

    version: str
    run_id: str
    promoted: bool
    champion_changed: bool
    champion_version: str | None
    reasons: tuple[str, ...]
    ndcg_at_10: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_reports(
    settings: Settings, manifest: dict[str, Any], champion: Recommender | None
) -> tuple[dict[str, Any], Any]:
    """Challenger, its non-private twin, the champion and the baselines on the run's test split."""
    cut, end = pd.Timestamp(manifest["cuts"]["test"]), pd.Timestamp(manifest["cuts"]["as_of"])
    # the run's pinned data (however the lake grew) and its models, fetched from the artifact store
    data = fetch_training_data(settings, manifest["training_data_uri"])
    events = data.events()
    catalog = data.catalog()
    state = feature_state(settings, users_before(events, cut), cut, source=data.state_rows)
    split = temporal_split_from_state(events, catalog, state, cut, end)
    if split.n_users == 0:
        raise ValueError(f"no user with history bought a catalog item in the test window {cut}..{end}")
    dp_dir = fetch(settings, manifest["model_uri"])
    dp = load_recommender(dp_dir)
    twin = load_recommender(fetch(settings, manifest["nonprivate_uri"]))
    pop_eval = np.load(dp_dir / "popularity_eval.npy")
    reports = {}
    for name, rec in (("challenger", dp), ("nonprivate", twin)):
        rec.popularity = pop_eval  # the release for the test cut, not the serving one
        reports[name] = evaluate_scores(name, rec.scores(split.state), split, catalog)
        reports[f"{name}_bare"] = evaluate_scores(
            f"{name}_bare", rec.model_scores(split.state), split, catalog
        )
    if champion is not None:
        champion = champion.on_catalog(catalog)  # the run's pinned catalog may have grown since
        champion.popularity = pop_eval
        reports["champion"] = evaluate_scores("champion", champion.scores(split.state), split, catalog)
    pop_all = popularity_counts(events, catalog, cut)
    pop_recent = popularity_counts(events, catalog, cut, cut - pd.Timedelta(days=30))
    reports["popularity_all"] = evaluate_scores("popularity_all", broadcast(pop_all, split), split, catalog)
    reports["popularity_recent"] = evaluate_scores(
        "popularity_recent", broadcast(pop_recent, split), split, catalog
    )
    reports["dp_popularity"] = evaluate_scores("dp_popularity", broadcast(pop_eval, split), split, catalog)
    reports["buy_again"] = evaluate_scores(
        "buy_again", buy_again_scores(split, catalog, pop_all), split, catalog
    )
    reports["cooccurrence"] = evaluate_scores(
        "cooccurrence", cooccurrence_scores(events, catalog, split, cut), split, catalog
    )
    return reports, split


def register_and_gate(settings: Settings, manifest: dict[str, Any]) -> RegistrationManifest:
    """Evaluate, log and register the challenger, attach its privacy statement, commit the ledger
    charges, and run the promotion gate against the champion on the same evaluation data."""
    champion_version = alias_version(settings, CHAMPION)
    # the champion's model trained before its validation cut: its served refit may have seen this test window
    champion = load_version(settings, champion_version, for_gate=True) if champion_version else None
    reports, split = evaluation_reports(settings, manifest, champion)
    data = fetch_training_data(settings, manifest["training_data_uri"])  # cached: the days it trained on
    metrics = {f"{name}.{k}": v for name, r in reports.items() for k, v in r.flat().items()}
    for variant in ("A", "B"):
        metrics[f"retention_{variant}_ndcg_at_10"] = retention(
            reports["challenger"], reports["nonprivate"], variant
        )
    metrics.update(
        epsilon=manifest["epsilon"],
        delta=manifest["delta"],
        seconds_per_step_dp=manifest["seconds_per_step"],
        seconds_per_step_nonprivate=manifest["seconds_per_step_nonprivate"],
    )
    params = {k: v for k, v in manifest.items() if k not in {"cuts", "blend"}}
    params.update({f"cut_{k}": v for k, v in manifest["cuts"].items()})
    params.update({f"blend_{k}": v for k, v in manifest["blend"].items()})
    report = {name: r.to_dict() for name, r in reports.items()}
    report["test_users"] = split.n_users
    served_uri = manifest.get("served_model_uri") or manifest["model_uri"]
    refit = served_uri != manifest["model_uri"]
    registered = log_training(
        settings,
        load_recommender(fetch(settings, served_uri)),
        gate_model=load_recommender(fetch(settings, manifest["model_uri"])) if refit else None,
        run_key=manifest["run_key"],
        params=params,
        metrics=metrics,
        report=report,
        extra_tags={
            "shoprec.as_of": str(manifest["as_of"]),
            **data_tags(data.days),
            # days of the training window that ingest rejected (quarantined); "" when none
            "shoprec.rejected_days": str(manifest.get("rejected_days", "")),
        },
    )
    ledger = open_ledger(settings)
    try:
        # the count releases the model ships: DP popularity, and the DP co-occurrence its item tower reads
        count_ids = [int(manifest["popularity_charge_id"])]
        if manifest.get("cooccurrence_charge_id") is not None:
            count_ids.append(int(manifest["cooccurrence_charge_id"]))
        for charge_id in (int(manifest["charge_id"]), *count_ids):
            if str(ledger.charge(int(charge_id)).status) != "committed":
                ledger.commit(
                    int(charge_id), model_version=registered.version, artifact_uri=registered.model_uri
                )
        statement = PrivacyStatement.from_charge(
            ledger.charge(int(manifest["charge_id"])),
            secure_rng=False,
            noise_generator=manifest["noise_generator"],
            count_charges=[ledger.charge(charge_id) for charge_id in count_ids],
            trainings=REFIT_TRAININGS if refit else "",
        )
        # the ledger's head after this version's commits, anchored on the version beside its statement
        attach_to_model_version(
            statement,
            tracking_uri=settings.resolved_mlflow_tracking_uri,
            registry_uri=settings.resolved_mlflow_registry_uri,
            model_name=settings.registered_model_name,
            version=registered.version,
            ledger_anchor=ledger.anchor(),
        )
    finally:
        ledger.close()
    tags = version_tags(settings, registered.version)
    if champion_version == registered.version:  # a retried run after its own promotion
        champion_version, champion_ndcg = None, None
    else:
        champion_ndcg = (
            {v: reports["champion"].metric(v, GATE_METRIC) for v in ("A", "B")}
            if "champion" in reports
            else None
        )
    baselines = {
        name: {v: reports[name].metric(v, GATE_METRIC) for v in ("A", "B")} for name in GATE_BASELINES
    }
    challenger = {v: reports["challenger"].metric(v, GATE_METRIC) for v in ("A", "B")}
    decision = decide_promotion(
        challenger_version=registered.version,
        challenger=challenger,
        champion_version=champion_version,
        champion=champion_ndcg,
        baselines=baselines,
        privacy_problems=privacy_within_policy(settings, tags, int(manifest["n_users"])),
        tolerance=settings.promotion_tolerance,
    )
    changed = apply_decision(settings, decision)
    return RegistrationManifest(
        version=registered.version,
        run_id=registered.run_id,
        promoted=decision.promote,
        champion_changed=changed,
        champion_version=alias_version(settings, CHAMPION),
        reasons=decision.reasons,
        ndcg_at_10=challenger,
    )


# --- is a training due? ---------------------------------------------------------------------------
DATA_DAYS_TAG: Final = "shoprec.data_days"  # the days a version was trained on (format_day_ranges)
DATA_END_TAG: Final = "shoprec.data_end"  # the last of them (ISO date): the version's data end


def data_tags(days: Sequence[dt.date]) -> dict[str, str]:
    """The tags that say which lake days a registered version was trained on."""
    return {DATA_DAYS_TAG: format_day_ranges(days), DATA_END_TAG: max(days).isoformat()}


def version_data_end(tags: Mapping[str, str]) -> dt.date | None:
    """A version's data end from its tags (``shoprec.data_end``; a version registered before that
    tag existed: the day before its ``shoprec.as_of``), or None."""
    if DATA_END_TAG in tags:
        return dt.date.fromisoformat(tags[DATA_END_TAG])
    if "shoprec.as_of" in tags:
        return (pd.Timestamp(tags["shoprec.as_of"]) - pd.Timedelta(days=1)).date()
    return None


def last_trained_data_end(settings: Settings, *, other_than_run: str | None = None) -> dt.date | None:
    """The newest data end of the registered versions (leaving out ``other_than_run``'s own), or None."""
    import mlflow

    try:
        versions = client(settings).search_model_versions(f"name = '{settings.registered_model_name}'")
    except mlflow.exceptions.MlflowException:
        return None
    ends = [
        end
        for v in versions
        if other_than_run is None or v.tags.get("shoprec.run_key") != other_than_run
        if (end := version_data_end(v.tags)) is not None
    ]
    return max(ends) if ends else None


@dataclass(frozen=True)
class TrainingDue:
    """Whether a ``train_recommender`` run trains, and why (its ``check_training_due`` log says it)."""

    due: bool
    reason: str


def decide_training_due(
    days: Sequence[dt.date], last_end: dt.date | None, *, eval_days: int, min_interval_hours: float
) -> TrainingDue:
    """The due rule on data time alone (never the clock), for a run that would train on ``days``
    (:func:`tasks.training_data.pinned_days`) when the newest registered version's data end is
    ``last_end``: due when the days cover the validation and the test window (``eval_days`` each) and
    as many days of history before them, and their end is at least ``min_interval_hours`` after
    ``last_end``. A run triggered by an older event than the last training's is judged on its own
    data end, so it is not due."""
    if not days:
        return TrainingDue(False, "no lake partition up to the run's data end")
    end, span = max(days), (max(days) - min(days)).days + 1
    needed = 3 * eval_days
    if span < needed:
        return TrainingDue(
            False,
            f"data {min(days)}..{end} covers {span} days; a training needs {needed} "
            f"(validation and test windows of {eval_days} days and as much history before them)",
        )
    if last_end is None:
        return TrainingDue(True, f"no version registered yet; data end {end}")
    gap_hours = (snapshot_time(end) - snapshot_time(last_end)) / pd.Timedelta(hours=1)
    if gap_hours < min_interval_hours:
        return TrainingDue(
            False,
            f"data end {end} is {gap_hours:g} h after the newest version's data end {last_end}; "
            f"the minimum is {min_interval_hours:g} h",
        )
    return TrainingDue(True, f"data end {end} is {gap_hours:g} h after the newest version's {last_end}")


def training_due(
    settings: Settings, named_days: Sequence[dt.date] = (), *, run_key: str | None = None
) -> TrainingDue:
    """Whether the run ``run_key``, whose triggering ``features`` events (or conf) name ``named_days``,
    should train: :func:`decide_training_due` on the lake days it would pin (up to the last named day;
    none named: the lake's latest partition) against the newest data end among the versions other
    runs registered (a re-run of a run that registered already goes on: its steps are idempotent)."""
    days = pinned_days(list_partitions(settings.events_dir), named_days)
    return decide_training_due(
        days,
        last_trained_data_end(settings, other_than_run=run_key),
        eval_days=settings.eval_days,
        min_interval_hours=settings.min_training_interval_hours,
    )
