"""Benchmark 1 (quality under privacy): NDCG@10 and Recall@20 of baselines, the shipped two-tower
(bare, non-private twin and user-level DP-SGD at several epsilons) and the whole DP system with and
without the model.

The model is trained by the shipped functions (:func:`fit_bare`: :func:`tasks.training.training_examples`,
:func:`tasks.training.train_config` / :func:`tasks.training.twin_config`, :func:`tasks.training.fit_model`),
with the pipeline's Settings; only the noise multiplier is computed here, for the benchmark's epsilon
(:func:`tasks.privacy.accounting.calibrate_noise`, the calibration the ledger does for a run).

Protocol (:mod:`tasks.evaluation`): temporal split at the data's end ``as_of`` with
:meth:`tasks.dataset.Cuts.from_end`: test truth ``[as_of - W, as_of)`` (W = 28 days on Online Retail
II, 7 days on the 45-day synthetic shop), blend tuning on the W days before; the training set is built
as ``run_training`` builds it (:func:`tasks.dataset.per_user_cuts`: each user's state at their own cut,
labels in the SHOPREC_EVAL_DAYS-long window after it, before the validation cut), with the state
computed from the events instead of Feast (the same definition). Full ranking over the catalog,
variant A (repeats included) and B (only items new to the user). Settings were chosen on the
validation window (benchmarks/model_sweep.py), never on the test window reported here.

* data: the full Online Retail II 2009-2010 file through :func:`tasks.sources.load_online_retail`
  (events read straight from the landing files: no pseudonymisation is needed for an offline score),
  and in the full run a synthetic shop of 100,000 users;
* privacy: delta = 1 / (10 N_users), user-level, the ledger's RDP accountant; the own-history blend
  uses only the user's own purchases (no privacy cost), so the DP rows' epsilon covers everything
  they release; the DP system's total epsilon composes DP-SGD with its two DP popularity releases;
* the DP popularity baseline is one release of OpenDP's discrete Gaussian (noise multiplier
  ``Settings.popularity_noise_multiplier``, at most ``Settings.popularity_cap_per_user`` items per
  user; fresh CSPRNG noise, so it varies between runs whatever the seed), reported with its own epsilon.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import Context, Goal, Section, line_plot, online_retail_file, stopwatch


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]
    epsilons: tuple[float, ...]  # bare DP model at these user-level epsilons
    window_days: int = 28
    max_eval_users: int | None = None  # evaluate on a seeded sample of the split's users
    # total epsilons of the whole DP system (DP two-tower + own history + DP popularity), composed
    system_epsilons: tuple[float, ...] = (8.0,)
    ablations: bool = False  # one-at-a-time changes of the review items (ABLATIONS), first seed, top epsilon
    settings: tuple[tuple[str, Any], ...] = ()  # Settings fields changed for this data set


# One-at-a-time changes from the shipped settings: what each item of the issue-17 review changed,
# undone alone (first seed, DP at the plan's top epsilon, bare model, validation and test window).
ABLATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("user features on (review: near-constant user branch)", {"train_user_features": True}),
    (
        "item tower 'mlp' (the session-5 tower: text + category + price through 2 layers)",
        {"train_item_tower": "mlp"},
    ),
    ("item tower 'residual' (text + MLP with a skip)", {"train_item_tower": "residual"}),
    (
        "user tower 'mean' (item 3: masked mean instead of attention over the ordered items)",
        {"train_user_tower": "mean"},
    ),
    ("temperature 0.2 (the session-5 default)", {"train_temperature": 0.2}),
    (
        "DP schedule of the review: sample rate 1/18, 90 steps",
        {"train_sample_rate": 1 / 18, "train_steps": 90},
    ),
    ("DP learning rate 1e-2 (inherited from the synthetic shop)", {"train_lr": 1e-2}),
    ("32 negatives and 20 positives (session-5)", {"train_negatives": 32, "train_cap_k": 20}),
)


def popularity_noise_for(epsilon: float, delta: float, releases: int) -> float:
    """Noise multiplier of ``releases`` discrete Gaussian popularity releases that together spend
    ``epsilon`` (rho-zCDP, the RDP curve of a Gaussian with q = 1, as the ledger composes it)."""
    from tasks.privacy.accounting import rdp_epsilon, smallest_noise

    return smallest_noise(lambda noise: rdp_epsilon([(noise, 1.0, releases)], delta), epsilon)


def per_user_training_set(
    events: pd.DataFrame, end: pd.Timestamp, history: int, horizon_days: int
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(state, labels) as ``run_training`` builds them, each user's state at their own cut."""
    from tasks.dataset import per_user_cuts, purchases_after_cuts
    from tasks.features import user_state_at

    user_cuts = per_user_cuts(events, end, horizon_days)
    parts = []
    for cut, group in user_cuts.groupby("cut"):
        mine = events[events["user_id"].isin(set(group["user_id"]))]
        parts.append(user_state_at(mine, pd.Timestamp(cut), history))
    state = pd.concat(parts, ignore_index=True).sort_values("user_id", kind="stable")
    state = state[state["recent_items"].map(len) > 0].reset_index(drop=True)
    return state, purchases_after_cuts(events, user_cuts, end, horizon_days)


def sample_split(split: Any, limit: int | None, seed: int = 0) -> Any:
    from tasks.evaluation import EvalSplit

    if limit is None or split.n_users <= limit:
        return split
    rows = np.sort(np.random.default_rng(seed).choice(split.n_users, limit, replace=False))
    return EvalSplit(
        cut=split.cut,
        end=split.end,
        state=split.state.iloc[rows].reset_index(drop=True),
        truth=tuple(split.truth[i] for i in rows),
    )


def persistent_cache() -> Path:
    """Embedding cache kept across benchmark runs (the encoder is deterministic; titles are public)."""
    from tasks.config import get_settings

    return get_settings().home / "benchmarks" / "cache"


def read_landing(landing: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items) of every landing day; items keep their latest attributes."""
    events = pd.concat(
        [pd.read_parquet(p) for p in sorted(landing.glob("date=*/events*.parquet"))], ignore_index=True
    )
    items = pd.concat(
        [pd.read_parquet(p) for p in sorted(landing.glob("date=*/items*.parquet"))], ignore_index=True
    )
    items = items.drop_duplicates("item_id", keep="last").reset_index(drop=True)
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    events["user_id"] = events["user_id"].astype(str)
    events["item_id"] = events["item_id"].astype(str)
    return events, items


def online_retail(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tasks.sources import load_online_retail

    landing = ctx.work_dir / "online_retail" / "landing"
    load_online_retail(online_retail_file(ctx.repo_root), landing)
    return read_landing(landing)


def synthetic(ctx: Context, n_users: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tasks.sources import SyntheticConfig, generate

    landing = ctx.work_dir / f"synthetic_{n_users}" / "landing"
    generate(SyntheticConfig(n_users=n_users, n_items=4_000, days=45, seed=11), landing)
    return read_landing(landing)


@dataclass
class Prepared:
    """One data set made ready once: catalog, cuts, the training set (``run_training``'s
    construction), the validation and test splits and what every ranker shares on them."""

    catalog: Any
    cuts: Any
    delta: float
    n_users: int
    state: pd.DataFrame
    labels: dict[str, list[str]]
    refit_state: pd.DataFrame  # the refit's training set: every user's latest window before the test cut
    refit_labels: dict[str, list[str]]
    val: Any
    test: Any
    own_val: np.ndarray
    own_test: np.ndarray
    content_val: np.ndarray
    content_test: np.ndarray


def prepare(events: pd.DataFrame, items: pd.DataFrame, window: int, max_eval_users: int | None) -> Prepared:
    """Embed the titles (cached), cut at the data's end and build the training set and both splits."""
    from tasks.catalog import build_item_catalog, history_positions, own_purchase_matrix
    from tasks.config import get_settings
    from tasks.dataset import Cuts
    from tasks.embeddings import embed_items, load_pretrained_encoder
    from tasks.evaluation import temporal_split
    from tasks.model import content_affinity, text_neighbours

    settings = get_settings()
    history = settings.history_length
    encoder = load_pretrained_encoder(device="cpu", package=settings.encoder_package)
    embedded = embed_items(items[["item_id", "title"]], persistent_cache(), encoder)
    catalog = build_item_catalog(items, embedded.frame, encoder_id=encoder.model_id)
    as_of = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    cuts = Cuts.from_end(as_of, window)
    n_users = int(events["user_id"].nunique())
    state, labels = per_user_training_set(events, cuts.validation, history, window)
    refit_state, refit_labels = per_user_training_set(events, cuts.test, history, window)
    val = sample_split(temporal_split(events, catalog, cuts.validation, window, history), max_eval_users)
    test = sample_split(temporal_split(events, catalog, cuts.test, window, history), max_eval_users)
    neighbours = text_neighbours(catalog.text)
    content_val, content_test = (
        content_affinity(
            history_positions(s.state["recent_items"], catalog, history), neighbours, catalog.n_items
        )
        for s in (val, test)
    )
    return Prepared(
        catalog=catalog,
        cuts=cuts,
        delta=1.0 / (10 * n_users),
        n_users=n_users,
        state=state,
        labels=labels,
        refit_state=refit_state,
        refit_labels=refit_labels,
        val=val,
        test=test,
        own_val=own_purchase_matrix(val.state, catalog),
        own_test=own_purchase_matrix(test.state, catalog),
        content_val=content_val,
        content_test=content_test,
    )


def fit_bare(
    prep: Prepared,
    settings: Any,
    *,
    private: bool,
    epsilon: float | None = None,
    also: Sequence[tuple[float, float, int]] = (),
    seed: int | None = None,
) -> tuple[Any, Any, float]:
    """(bare Recommender, TrainResult, seconds) trained exactly as ``run_training`` trains: its
    examples (:func:`tasks.training.training_examples`), schedule (:func:`tasks.training.train_config`,
    :func:`tasks.training.twin_config`) and fit (:func:`tasks.training.fit_model`), from ``settings``.
    A private run's noise multiplier spends ``epsilon`` together with ``also`` (RDP accountant, at the
    benchmark's delta), as the ledger's calibration would."""
    from tasks.catalog import BlendWeights
    from tasks.model import Recommender
    from tasks.privacy.accounting import calibrate_noise, sampled_gaussians
    from tasks.training import fit_model, train_config, training_examples, twin_config

    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    examples, _ = training_examples(settings, prep.state, prep.labels, prep.catalog)
    config = dataclasses.replace(train_config(settings, n_users=len(examples)), noise_seed=None)
    if private:
        if epsilon is None:
            raise ValueError("a private fit needs its epsilon")
        n = len(examples)
        noise = calibrate_noise(
            epsilon, prep.delta, config.sample_rate(n), config.steps(n), existing=sampled_gaussians(also)
        )
        config = dataclasses.replace(config, noise_multiplier=noise)
    else:
        config = twin_config(settings, config)
    with stopwatch() as elapsed:
        model, result = fit_model(
            settings, prep.catalog, examples, config, delta=prep.delta if private else None
        )
    bare = Recommender(
        model, prep.catalog, weights=BlendWeights(), popularity=None, history_length=settings.history_length
    )
    return bare, result, elapsed()


def fit_served(
    prep: Prepared,
    settings: Any,
    *,
    epsilon: float,
    also: Sequence[tuple[float, float, int]] = (),
    seed: int | None = None,
) -> tuple[Any, Any, Any, dict[str, Any], float]:
    """The pipeline's two DP-SGD trainings under its one charge (``run_training`` with
    SHOPREC_TRAIN_REFIT): (model trained before the validation cut, which tunes the blend; its refit up
    to the test cut, the benchmark's data end for a model scored on the test window, i.e. what the
    pipeline serves; the first model's TrainResult; the charged mechanism, with the first training's
    seconds; seconds of both). One noise multiplier for both, calibrated for
    :func:`tasks.training.charged_schedule` with ``also`` to spend ``epsilon``."""
    from tasks.catalog import BlendWeights
    from tasks.model import Recommender
    from tasks.privacy.accounting import calibrate_noise, sampled_gaussians
    from tasks.training import charged_schedule, fit_model, train_config, training_examples

    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    first, _ = training_examples(settings, prep.state, prep.labels, prep.catalog)
    second, _ = training_examples(settings, prep.refit_state, prep.refit_labels, prep.catalog)
    configs = [(train_config(settings, n_users=len(e)), e) for e in (first, second)]
    q, steps = charged_schedule([(c, len(e)) for c, e in configs])
    noise = calibrate_noise(epsilon, prep.delta, q, steps, existing=sampled_gaussians(also))
    models, results, each = [], [], []
    with stopwatch() as elapsed:
        for config, examples in configs:
            config = dataclasses.replace(config, noise_multiplier=noise, noise_seed=None)
            with stopwatch() as one:
                model, result = fit_model(settings, prep.catalog, examples, config, delta=prep.delta)
            results.append(result)
            each.append(one())
            models.append(
                Recommender(
                    model,
                    prep.catalog,
                    weights=BlendWeights(),
                    popularity=None,
                    history_length=settings.history_length,
                )
            )
    charged = {
        "noise_multiplier": noise,
        "sample_rate": q,
        "steps": steps,
        "train_users": len(first),
        "refit_users": len(second),
        "first_seconds": each[0],
    }
    return models[0], models[1], results[0], charged, elapsed()


SYSTEM = "DP system eps={eps:g} (DP two-tower + own history + DP popularity)"
SYSTEM_WITHOUT = "DP system eps={eps:g} without the two-tower (own history + the same DP popularity)"
SERVED = "DP system eps={eps:g}: its served refit alone (bare, trained up to the test cut)"
TWIN = "two-tower, no DP"
TWIN_SYSTEM = "system, no DP (two-tower + own history + 14 d popularity)"


def evaluate_dataset(
    name: str, events: pd.DataFrame, items: pd.DataFrame, plan: Plan, settings: Any = None
) -> dict[str, Any]:
    """Every ranker's metrics on the test window, per seed; what the DP runs spent; the ablations."""
    from tasks.baselines import broadcast, buy_again_scores, cooccurrence_scores, popularity_counts
    from tasks.catalog import blend_scores
    from tasks.config import get_settings
    from tasks.dataset import INTERACTIONS
    from tasks.evaluation import evaluate_scores, tune_blend
    from tasks.privacy.accounting import rdp_epsilon
    from tasks.training import dp_popularity, popularity_release

    settings = (settings or get_settings()).model_copy(update=dict(plan.settings))
    pop_policy = dp_popularity(settings)  # the pipeline's release (Settings.popularity_*)
    prep = prepare(events, items, plan.window_days, plan.max_eval_users)
    catalog, cuts, val, test, delta = prep.catalog, prep.cuts, prep.val, prep.test, prep.delta
    no_model_val, no_model_test = np.zeros_like(prep.content_val), np.zeros_like(prep.content_test)

    scores: dict[str, list[dict[str, float]]] = {}

    def metrics(matrix: np.ndarray, split: Any) -> dict[str, float]:
        report = evaluate_scores("ranker", matrix, split, catalog)
        return {f"{v}_{m}": report.metric(v, m) for v in ("A", "B") for m in ("ndcg@10", "recall@20")}

    def record(label: str, matrix: np.ndarray) -> None:
        scores.setdefault(label, []).append(metrics(matrix, test))

    def blend(
        raw_val: np.ndarray, raw_test: np.ndarray, pop_val: Any, pop_test: Any
    ) -> tuple[np.ndarray, Any]:
        """Blend weights tuned on the validation window, applied to the test window."""
        weights, _ = tune_blend(raw_val, prep.own_val, pop_val, val, catalog, content=prep.content_val)
        return blend_scores(raw_test, prep.own_test, pop_test, weights, prep.content_test), weights

    popularity = popularity_counts(events, catalog, cuts.test, cuts.test - pd.Timedelta(days=30))
    record("popularity (30 d, no privacy)", broadcast(popularity, test))
    interactions = events[events["event_type"].isin(list(INTERACTIONS))]
    recent = {  # exact distinct users per item in the DP release's window (its non-private counterpart)
        end: popularity_counts(
            interactions.assign(event_type="purchase"),
            catalog,
            end,
            end - pd.Timedelta(days=pop_policy.days),
        )
        for end in (cuts.validation, cuts.test)
    }
    record(f"popularity ({pop_policy.days} d, no privacy)", broadcast(recent[cuts.test], test))
    # what the user's own history adds to popularity without any model: text neighbours and repeats
    record(
        f"own history (repeats + text neighbours) + {pop_policy.days} d popularity, no model (no privacy)",
        blend(no_model_val, no_model_test, recent[cuts.validation], recent[cuts.test])[0],
    )
    record("item-to-item co-occurrence (no privacy)", cooccurrence_scores(events, catalog, test, cuts.test))
    record("buy again (own history + popularity)", buy_again_scores(test, catalog, popularity))
    runs: list[dict[str, Any]] = []
    contributions: list[dict[str, Any]] = []
    ablations: list[dict[str, Any]] = []
    shipped_fit: tuple[Any, Any, float] | None = None

    def run_row(label: str, seed: int, eps: float | None, result: Any, seconds: float, **extra: Any) -> None:
        runs.append(
            {
                "model": label,
                "seed": seed,
                "target_epsilon": eps,
                "epsilon": result.epsilon,
                "delta": result.delta,
                "accountant": result.accountant,
                "noise_multiplier": result.noise_multiplier,
                "sample_rate": result.sample_rate,
                "steps": result.steps,
                "train_users": result.n_users,
                "seconds": seconds,
                **extra,
            }
        )

    def bare_rows(seed: int, eps: float, bare: Any, result: Any, seconds: float, **extra: Any) -> None:
        raw_val, raw = bare.model_scores(val.state), bare.model_scores(test.state)
        label = f"DP eps={eps:g}"
        record(label, raw)
        blended, weights = blend(raw_val, raw, None, None)
        record(f"{label} + own-history blend", blended)
        run_row(
            label,
            seed,
            eps,
            result,
            seconds,
            blend_repeat=weights.repeat,
            blend_content=weights.content,
            **extra,
        )

    for seed in plan.seeds:
        record("DP popularity", broadcast(popularity_release(events, catalog, cuts.test, pop_policy), test))
        twin, result, seconds = fit_bare(prep, settings, private=False, seed=seed)
        raw_val, raw = twin.model_scores(val.state), twin.model_scores(test.state)
        record(TWIN, raw)
        record(f"{TWIN} + own-history blend", blend(raw_val, raw, None, None)[0])
        record(TWIN_SYSTEM, blend(raw_val, raw, recent[cuts.validation], recent[cuts.test])[0])
        run_row(TWIN, seed, None, result, seconds)
        # A bare DP row at an epsilon the DP system also runs is the system's first training (below):
        # the same construction at the whole run's charge, one fit fewer per epsilon and seed.
        for eps in (e for e in plan.epsilons if e not in plan.system_epsilons):
            bare, result, seconds = fit_bare(prep, settings, private=True, epsilon=eps, seed=seed)
            if (seed, eps) == (plan.seeds[0], max(plan.epsilons)):
                shipped_fit = (bare, result, seconds)  # the ablations' "shipped settings" row (same fit)
            bare_rows(seed, eps, bare, result, seconds)
        # The whole DP system at a total epsilon: two DP popularity releases (validation and test cut)
        # take half the budget, DP-SGD the rest (composed by the RDP accountant).
        for eps in plan.system_epsilons:
            pop_noise = popularity_noise_for(eps / 2, delta, 2)
            pop_mech = [(pop_noise, 1.0, 2)]
            gate, served, gate_result, charged, seconds = fit_served(
                prep, settings, epsilon=eps, also=pop_mech, seed=seed
            )
            if eps in plan.epsilons:
                total = rdp_epsilon(
                    [*pop_mech, (charged["noise_multiplier"], charged["sample_rate"], charged["steps"])],
                    delta,
                )
                bare_rows(seed, eps, gate, gate_result, charged["first_seconds"], total_epsilon=total)
            policy = dataclasses.replace(pop_policy, noise_multiplier=pop_noise)
            pop_v = popularity_release(events, catalog, cuts.validation, policy)
            pop_t = popularity_release(events, catalog, cuts.test, policy)
            # blend tuned with the model trained before the validation cut, served with the refit
            with_model, weights = blend(
                gate.model_scores(val.state), served.model_scores(test.state), pop_v, pop_t
            )
            without_model = blend(no_model_val, no_model_test, pop_v, pop_t)[0]
            record(SYSTEM.format(eps=eps), with_model)
            record(SYSTEM_WITHOUT.format(eps=eps), without_model)  # the same releases, no model
            record(SERVED.format(eps=eps), served.model_scores(test.state))
            a, b = scores[SYSTEM.format(eps=eps)][-1], scores[SYSTEM_WITHOUT.format(eps=eps)][-1]
            contributions.append(
                {
                    "epsilon": eps,
                    "seed": seed,
                    **{f"{v}_ndcg@10": a[f"{v}_ndcg@10"] - b[f"{v}_ndcg@10"] for v in "AB"},
                }
            )
            mechanism = (charged["noise_multiplier"], charged["sample_rate"], charged["steps"])
            runs.append(
                {
                    "model": SYSTEM.format(eps=eps) + ": both trainings, one charge",
                    "seed": seed,
                    "target_epsilon": eps,
                    "epsilon": rdp_epsilon([mechanism], delta),
                    "total_epsilon": rdp_epsilon([*pop_mech, mechanism], delta),
                    "delta": delta,
                    "accountant": "rdp",
                    "seconds": seconds,
                    "blend_repeat": weights.repeat,
                    "blend_popularity": weights.popularity,
                    "blend_content": weights.content,
                    "blend_model": weights.model,
                    "popularity_noise": pop_noise,
                    **charged,
                }
            )
    if plan.ablations:
        eps, seed = max(plan.epsilons), plan.seeds[0]
        for change, values in (("shipped settings", {}), *ABLATIONS):
            changed = settings.model_copy(update=values)
            if values or shipped_fit is None:
                bare, result, seconds = fit_bare(prep, changed, private=True, epsilon=eps, seed=seed)
            else:  # the shipped settings at this seed and DP-SGD epsilon were fitted above: not again
                bare, result, seconds = shipped_fit
            on_val, on_test = (
                metrics(bare.model_scores(val.state), val),
                metrics(bare.model_scores(test.state), test),
            )
            ablations.append(
                {
                    "change": change,
                    "epsilon": result.epsilon,
                    "noise_multiplier": result.noise_multiplier,
                    "steps": result.steps,
                    "sample_rate": result.sample_rate,
                    "val_A_ndcg@10": on_val["A_ndcg@10"],
                    "val_B_ndcg@10": on_val["B_ndcg@10"],
                    "A_ndcg@10": on_test["A_ndcg@10"],
                    "B_ndcg@10": on_test["B_ndcg@10"],
                    "seconds": seconds,
                }
            )
    pop_eps = rdp_epsilon([(pop_policy.noise_multiplier, 1.0, 1)], delta)
    return {
        "dataset": name,
        "events": len(events),
        "users": prep.n_users,
        "items": catalog.n_items,
        "test_users": test.n_users,
        "window_days": plan.window_days,
        "delta": delta,
        "cuts": {k: str(v) for k, v in cuts.__dict__.items()},
        "scores": scores,
        "runs": runs,
        "contributions": contributions,
        "ablations": ablations,
        "dp_popularity_epsilon": pop_eps,
        "popularity_cap": pop_policy.cap_per_user,
        "popularity_days": pop_policy.days,
        "settings": {
            k: getattr(settings, k)
            for k in type(settings).model_fields
            if k.startswith("train_") and k not in {"train_retry_delay_s"}
        },
    }


def _summary(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def tables_for(section: Section, result: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The quality table of one data set; returns mean/spread of every metric per ranker."""
    table = section.table(
        f"{result['dataset']}: {result['users']:,} users, {result['items']:,} items, {result['events']:,} "
        f"events; test = last {result['window_days']} days ({result['test_users']:,} users); mean ± sd over seeds",
        ["ranker", "A NDCG@10", "A Recall@20", "B NDCG@10", "B Recall@20", "retention vs no DP (A / B)"],
    )
    means: dict[str, tuple[float, float]] = {}
    for label, rows in result["scores"].items():
        cells = []
        for key in ("A_ndcg@10", "A_recall@20", "B_ndcg@10", "B_recall@20"):
            mean, sd = _summary([r[key] for r in rows])
            means[f"{label}|{key}"] = (mean, sd)
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        base_label = TWIN + (" + own-history blend" if label.endswith("blend") else "")
        if label.startswith("DP system"):
            base_label = TWIN if "served refit alone" in label else TWIN_SYSTEM
        retention = None
        if label.startswith(("DP eps", "DP system")) and "without" not in label:
            parts = []
            for v in ("A", "B"):
                dp = statistics.fmean(r[f"{v}_ndcg@10"] for r in rows)
                plain = statistics.fmean(r[f"{v}_ndcg@10"] for r in result["scores"][base_label])
                parts.append(f"{dp / plain:.0%}" if plain > 0 else "-")
            retention = " / ".join(parts)
        table.add(label, *cells, retention)
    return means


def contribution_table(
    section: Section, name: str, result: dict[str, Any]
) -> dict[float, dict[str, tuple[float, float]]]:
    """The model's contribution to the DP system (with minus without the two-tower, same releases), per
    total epsilon: mean ± sd over seeds; returns {epsilon: {variant: (mean, sd)}}."""
    table = section.table(
        f"{name}: what the DP two-tower adds to the DP system (NDCG@10 with minus without the model, the same "
        "DP popularity releases and blend tuning; mean ± sd over seeds)",
        ["total epsilon", "seeds", "A", "B", "B > 2 sd"],
    )
    out: dict[float, dict[str, tuple[float, float]]] = {}
    for eps in sorted({c["epsilon"] for c in result["contributions"]}):
        rows = [c for c in result["contributions"] if c["epsilon"] == eps]
        out[eps] = {v: _summary([r[f"{v}_ndcg@10"] for r in rows]) for v in ("A", "B")}
        (a, a_sd), (b, b_sd) = out[eps]["A"], out[eps]["B"]
        table.add(
            f"{eps:g}",
            len(rows),
            f"{a:+.4f} ± {a_sd:.4f}",
            f"{b:+.4f} ± {b_sd:.4f}",
            len(rows) > 1 and b > 2 * b_sd,
        )
    return out


def run(ctx: Context) -> Section:
    from tasks.config import get_settings
    from tasks.training import dp_popularity

    pop_policy = dp_popularity(get_settings())
    section = Section(key="quality", title="1. Quality under privacy")
    if ctx.quick:  # about 5 minutes on a free 2-core machine: 3 fits of the shipped model
        datasets = [("Online Retail II 2009-2010", lambda: online_retail(ctx), Plan((0,), (8.0,)))]
    else:
        datasets = [
            (
                "Online Retail II 2009-2010",
                lambda: online_retail(ctx),
                Plan((0, 1, 2), (1.0, 2.0, 4.0, 8.0), system_epsilons=(1.0, 2.0, 4.0, 8.0), ablations=True),
            ),
            (
                "synthetic, 100,000 users",
                lambda: synthetic(ctx, 100_000),
                Plan((0,), (8.0,), window_days=7, max_eval_users=5_000),
            ),
        ]
    results = []
    for name, load, plan in datasets:
        events, items = load()
        result = evaluate_dataset(name, events, items, plan)
        results.append(result)
        means = tables_for(section, result)
        contribution = contribution_table(section, name, result)
        eps_top = max(plan.epsilons)
        twin_a, twin_b = means[f"{TWIN}|A_ndcg@10"][0], means[f"{TWIN}|B_ndcg@10"][0]
        dp_a, dp_b = means[f"DP eps={eps_top:g}|A_ndcg@10"][0], means[f"DP eps={eps_top:g}|B_ndcg@10"][0]
        total = " total" if eps_top in plan.system_epsilons else ""  # the DP system's model, shared fit
        section.goals += [
            Goal(
                f"{name}: bare DP two-tower at{total} epsilon {eps_top:g}: A >= 0.25 and B >= 0.08",
                dp_a >= 0.25 and dp_b >= 0.08,
                f"A {dp_a:.4f}, B {dp_b:.4f}",
            ),
            Goal(
                f"{name}: non-private twin A >= 0.30 and B >= 0.10",
                twin_a >= 0.30 and twin_b >= 0.10,
                f"A {twin_a:.4f}, B {twin_b:.4f}",
            ),
            Goal(
                f"{name}: retention of the bare DP model at{total} epsilon {eps_top:g} >= 0.85 in B",
                twin_b > 0 and dp_b / twin_b >= 0.85,
                f"{dp_b / twin_b:.0%}" if twin_b > 0 else "non-private NDCG@10 is 0",
            ),
        ]
        if plan.system_epsilons:
            sys_eps = max(plan.system_epsilons)
            b_mean, b_sd = contribution[sys_eps]["B"]
            section.goals.append(
                Goal(
                    f"{name}: at total epsilon {sys_eps:g} the DP system beats the same system without the "
                    "model by more than two standard deviations in B",
                    len(plan.seeds) > 1 and b_mean > 2 * b_sd,
                    f"B {b_mean:+.4f} ± {b_sd:.4f} over {len(plan.seeds)} seed(s)",
                )
            )
            sys_a = means[f"{SYSTEM.format(eps=sys_eps)}|A_ndcg@10"][0]
            sys_b = means[f"{SYSTEM.format(eps=sys_eps)}|B_ndcg@10"][0]
            best_a, best_b = means[f"{TWIN_SYSTEM}|A_ndcg@10"][0], means[f"{TWIN_SYSTEM}|B_ndcg@10"][0]
            section.goals.append(
                Goal(
                    f"{name}: the DP system at total epsilon {sys_eps:g} reaches the non-private system",
                    sys_a >= best_a and sys_b >= best_b,
                    f"A {sys_a:.4f} vs {best_a:.4f}; B {sys_b:.4f} vs {best_b:.4f}",
                )
            )
        if result["ablations"]:
            ablation = section.table(
                f"{name}: each review item undone alone (bare DP model at epsilon {eps_top:g}, seed "
                f"{plan.seeds[0]}; the shipped settings were chosen on the validation window)",
                [
                    "change",
                    "epsilon",
                    "noise multiplier",
                    "sample rate",
                    "steps",
                    "validation A",
                    "validation B",
                    "test A",
                    "test B",
                    "seconds",
                ],
            )
            for r in result["ablations"]:
                ablation.add(
                    r["change"],
                    r["epsilon"],
                    r["noise_multiplier"],
                    r["sample_rate"],
                    r["steps"],
                    r["val_A_ndcg@10"],
                    r["val_B_ndcg@10"],
                    r["A_ndcg@10"],
                    r["B_ndcg@10"],
                    r["seconds"],
                )
        runs = section.table(
            f"{name}: DP-SGD runs (user-level, delta = {result['delta']:.2e}, RDP accountant)",
            [
                "model",
                "seed",
                "epsilon",
                "noise multiplier",
                "sample rate",
                "steps",
                "train users",
                "seconds",
            ],
        )
        for r in result["runs"]:
            runs.add(
                r["model"],
                r["seed"],
                r.get("total_epsilon", r["epsilon"]),
                r["noise_multiplier"],
                r["sample_rate"],
                r["steps"],
                r["train_users"],
                r["seconds"],
            )
        section.notes.append(
            f"{name}: DP popularity = one Gaussian release, user-level epsilon {result['dp_popularity_epsilon']:.2f} "
            f"at delta {result['delta']:.2e} (RDP accountant), at most {result['popularity_cap']} items per user"
        )
        slug = "quality_" + "".join(c if c.isalnum() else "_" for c in name.lower())[:40] + ".png"
        path, link = ctx.figure_path(slug)
        series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]] = {}
        for variant in ("A", "B"):
            eps = list(plan.epsilons)
            ms = [means[f"DP eps={e:g}|{variant}_ndcg@10"] for e in eps]
            series[f"bare DP model, variant {variant}"] = (eps, [m[0] for m in ms], [m[1] for m in ms])
            if plan.system_epsilons:
                sys_list = list(plan.system_epsilons)
                ms = [means[f"{SYSTEM.format(eps=e)}|{variant}_ndcg@10"] for e in sys_list]
                series[f"DP system (total eps), variant {variant}"] = (
                    sys_list,
                    [m[0] for m in ms],
                    [m[1] for m in ms],
                )
        line_plot(
            path,
            series,
            title=f"NDCG@10 vs user-level epsilon ({name})",
            xlabel="epsilon (user level, delta = 1/(10 N))",
            ylabel="NDCG@10",
            logx=True,
            reference={"no DP, A": twin_a, "no DP, B": twin_b},
        )
        section.figures.append(link)
        shipped = ", ".join(f"{k} {v}" for k, v in result["settings"].items())
        section.notes.append(
            f"{name}: the shipped Settings ({shipped}); seeds {list(plan.seeds)}; evaluation users capped at "
            f"{plan.max_eval_users or 'none'}"
        )
    section.notes += [
        "own-history blend: z-scored model score + w * log1p(own purchase count) + c * z-scored text-neighbour "
        "affinity (per item, the best title cosine to one of the user's 20 most recent items, among each "
        "item's 100 nearest titles: tasks.model.content_affinity); w and c tuned on the validation window "
        "(the user's own data and the public encoder only: no privacy cost)",
        "'own history ... no model' and 'DP system ... without the two-tower' are ablations: the same blend "
        "with the model's score left out, to show what the two-tower adds",
        "DP system (what the pipeline serves): the DP two-tower blended with the user's own purchases and a DP "
        f"popularity release (distinct users per item in the last {pop_policy.days} days, at most "
        f"{pop_policy.cap_per_user} items per user; one release at the validation cut to tune the weights, one at the "
        "test cut). The two releases get half of the total epsilon, DP-SGD the rest; the epsilon in the runs "
        "table is the composition of all three (RDP accountant). 'system, no DP' is the same blend with the "
        "non-private twin and exact popularity",
        "DP rows 'DP eps=...': at an epsilon the DP system also runs, the bare model is the DP system's first "
        "training (before the validation cut, the model that tunes the blend) at that TOTAL epsilon (DP-SGD "
        "shares it with the refit and the two DP popularity releases; the runs table's epsilon is the total): "
        "the same fit, shared, and a stricter figure than DP-SGD alone at that epsilon; at any other epsilon "
        "the epsilon is the model's alone. The own-history blend costs nothing. The ablations' rows are "
        "DP-SGD alone at the top epsilon (fit_bare)",
    ]
    section.data = {
        "datasets": results,
        "plans": {name: dataclasses.asdict(plan) for name, _, plan in datasets},
    }
    return section
