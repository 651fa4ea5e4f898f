"""Benchmark 1 (quality under privacy): NDCG@10 and Recall@20 of baselines, the non-private two-tower
model and user-level DP-SGD models at several epsilons, with and without the own-history blend.

Protocol (:mod:`tasks.evaluation`): temporal split at the data's end ``as_of`` with
:meth:`tasks.training.Cuts.from_end`: test truth ``[as_of - W, as_of)`` (W = 28 days on Online Retail
II, 7 days on the 45-day synthetic shop), blend tuning on the W days before; the training set is built
as ``run_training`` builds it (:func:`tasks.dataset.per_user_cuts`: each user's state at their own cut,
labels from the cut to the validation cut), with the state computed from the events instead of Feast.
Full ranking over the catalog, variant A (repeats included) and B (only items new to the user).

* data: the full Online Retail II 2009-2010 file through :func:`tasks.sources.load_online_retail`
  (events read straight from the landing files: no pseudonymisation is needed for an offline score),
  and in the full run a synthetic shop of 100,000 users;
* privacy: delta = 1 / (10 N_users), user-level, the ledger's RDP accountant
  (:func:`tasks.privacy.accounting.noise_for_budget` calibrates the noise multiplier for the whole run); the own-history blend uses only the user's own
  purchases (no privacy cost), so the DP rows' epsilon covers everything they release;
* the DP popularity baseline is one release of OpenDP's discrete Gaussian (noise multiplier
  ``Settings.popularity_noise_multiplier``, at most ``Settings.popularity_cap_per_user`` items per user; fresh CSPRNG noise, so it varies
  between runs whatever the seed), reported with its own epsilon.
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
    epsilons: tuple[float, ...]
    epochs: int
    batch_size: int
    window_days: int = 28
    max_eval_users: int | None = None  # evaluate on a seeded sample of the split's users
    # total epsilons of the whole DP system (DP two-tower + own history + DP popularity), composed
    system_epsilons: tuple[float, ...] = (8.0,)
    sweep: bool = False  # one-at-a-time sweep of batch, epochs, model size, clipping at max(epsilons)

    def train_config(self, seed: int) -> Any:
        """The pipeline's DP-SGD settings (``Settings.train_*``) with this plan's epochs and batch."""
        from tasks.config import get_settings
        from tasks.training import train_config

        base = train_config(get_settings())
        return dataclasses.replace(
            base, epochs=self.epochs, batch_size=self.batch_size, seed=seed, noise_seed=None
        )


# One-at-a-time changes from the plan's settings for the sweep (first seed, DP at the top epsilon).
SWEEP: tuple[tuple[str, dict[str, Any]], ...] = (
    ("batch 256", {"batch_size": 256}),
    ("batch 512", {"batch_size": 512}),
    ("epochs 2", {"epochs": 2}),
    ("epochs 10", {"epochs": 10}),
    ("model dim 32", {"dim": 32}),
    ("model dim 128", {"dim": 128}),
    ("clip 0.3", {"max_grad_norm": 0.3}),
    ("clip 3", {"max_grad_norm": 3.0}),
)


ORACLE_POPULARITY_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 1e6)


def popularity_noise_for(epsilon: float, delta: float, releases: int) -> float:
    """Noise multiplier of ``releases`` discrete Gaussian popularity releases that together spend
    ``epsilon`` (rho-zCDP, the RDP curve of a Gaussian with q = 1, as the ledger composes it)."""
    from tasks.privacy.accounting import rdp_epsilon

    low, high = 0.05, 100.0
    while high - low > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if rdp_epsilon([(mid, 1.0, releases)], delta) > epsilon else (low, mid)
    return high


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
    from tasks.privacy.accounting import noise_for_budget
    from tasks.training import fit_model, train_config, training_examples, twin_config

    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    examples, _ = training_examples(settings, prep.state, prep.labels, prep.catalog)
    config = dataclasses.replace(train_config(settings, n_users=len(examples)), noise_seed=None)
    if private:
        if epsilon is None:
            raise ValueError("a private fit needs its epsilon")
        n = len(examples)
        noise = noise_for_budget(epsilon, prep.delta, config.sample_rate(n), config.steps(n), also=also)
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


def evaluate_dataset(name: str, events: pd.DataFrame, items: pd.DataFrame, plan: Plan) -> dict[str, Any]:
    """Every ranker's metrics on the test window, per seed; plus what the DP runs spent."""
    import torch

    from tasks.baselines import broadcast, buy_again_scores, cooccurrence_scores, popularity_counts
    from tasks.catalog import (
        BlendWeights,
        blend_scores,
        build_item_catalog,
        history_positions,
        own_purchase_matrix,
    )
    from tasks.config import get_settings
    from tasks.dataset import INTERACTIONS, Cuts
    from tasks.embeddings import embed_items, load_pretrained_encoder
    from tasks.evaluation import evaluate_scores, temporal_split, tune_blend
    from tasks.model import Recommender, content_affinity, text_neighbours
    from tasks.privacy.accounting import noise_for_budget, rdp_epsilon
    from tasks.training import (
        TrainConfig,
        build_examples,
        dp_popularity,
        popularity_release,
        train,
    )

    settings = get_settings()
    pop_policy = dp_popularity(settings)  # the pipeline's release (Settings.popularity_*)
    history = settings.history_length
    encoder = load_pretrained_encoder(device="cpu", package=settings.encoder_package)
    embedded = embed_items(items[["item_id", "title"]], persistent_cache(), encoder)
    catalog = build_item_catalog(items, embedded.frame, encoder_id=encoder.model_id)
    as_of = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    window = plan.window_days
    cuts = Cuts.from_end(as_of, window)
    n_users = events["user_id"].nunique()
    delta = 1.0 / (10 * n_users)
    state, labels = per_user_training_set(events, cuts.validation, history, window)
    val = sample_split(temporal_split(events, catalog, cuts.validation, window, history), plan.max_eval_users)
    test = sample_split(temporal_split(events, catalog, cuts.test, window, history), plan.max_eval_users)
    own_val, own_test = own_purchase_matrix(val.state, catalog), own_purchase_matrix(test.state, catalog)
    neighbours = text_neighbours(catalog.text)
    content_val, content_test = (
        content_affinity(
            history_positions(s.state["recent_items"], catalog, history), neighbours, catalog.n_items
        )
        for s in (val, test)
    )
    no_model_val, no_model_test = np.zeros_like(content_val), np.zeros_like(content_test)

    scores: dict[str, list[dict[str, float]]] = {}

    def record(label: str, matrix: np.ndarray) -> None:
        report = evaluate_scores(label, matrix, test, catalog)
        scores.setdefault(label, []).append(
            {f"{v}_{m}": report.metric(v, m) for v in ("A", "B") for m in ("ndcg@10", "recall@20")}
        )

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
    own_w, _ = tune_blend(no_model_val, own_val, recent[cuts.validation], val, catalog, content=content_val)
    record(
        f"own history (repeats + text neighbours) + {pop_policy.days} d popularity, no model (no privacy)",
        blend_scores(no_model_test, own_test, recent[cuts.test], own_w, content_test),
    )
    record("item-to-item co-occurrence (no privacy)", cooccurrence_scores(events, catalog, test, cuts.test))
    record("buy again (own history + popularity)", buy_again_scores(test, catalog, popularity))
    runs: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    oracle: list[dict[str, Any]] = []

    def fit(config: TrainConfig, seed: int, dim: int = 64) -> tuple[Any, Any, float]:
        from tasks.model import build_model

        examples, _ = build_examples(
            state,
            labels,
            catalog,
            history_length=history,
            cap_k=config.cap_k,
            n_negatives=config.n_negatives,
            seed=seed,
        )
        if config.private and config.noise_multiplier <= 0:
            raise ValueError("a private config needs its noise multiplier")
        torch.manual_seed(seed)
        model = build_model(catalog, dim=dim, temperature=settings.train_temperature)
        with stopwatch() as elapsed:
            result = train(model, examples, config, delta=delta if config.private else None)
        bare = Recommender(model, catalog, weights=BlendWeights(), popularity=None, history_length=history)
        return bare, result, elapsed()

    def calibrated(config: TrainConfig, eps: float, also: list[tuple[float, float, int]]) -> TrainConfig:
        n_train = len(
            build_examples(
                state, labels, catalog, history_length=history, cap_k=config.cap_k, n_negatives=1, seed=0
            )[0]
        )
        q, steps = config.sample_rate(n_train), config.steps(n_train)
        noise = noise_for_budget(eps, delta, q, steps, also=also)
        return TrainConfig(**{**config.__dict__, "private": True, "noise_multiplier": noise})

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

    for seed in plan.seeds:
        record("DP popularity", broadcast(popularity_release(events, catalog, cuts.test, pop_policy), test))
        base = plan.train_config(seed)
        variants: list[tuple[str, TrainConfig, float | None]] = [
            ("two-tower, no DP", TrainConfig(**{**base.__dict__, "private": False}), None)
        ]
        variants += [(f"DP eps={eps:g}", calibrated(base, eps, []), eps) for eps in plan.epsilons]
        for label, config, eps in variants:
            bare, result, seconds = fit(config, seed)
            raw_val, raw = bare.model_scores(val.state), bare.model_scores(test.state)
            weights, _ = tune_blend(raw_val, own_val, None, val, catalog, content=content_val)
            record(label, raw)
            record(f"{label} + own-history blend", blend_scores(raw, own_test, None, weights, content_test))
            if not config.private:  # the whole system without privacy: exact recent popularity
                sys_w, _ = tune_blend(
                    raw_val, own_val, recent[cuts.validation], val, catalog, content=content_val
                )
                record(
                    "system, no DP (two-tower + own history + 14 d popularity)",
                    blend_scores(raw, own_test, recent[cuts.test], sys_w, content_test),
                )
                if plan.sweep and seed == plan.seeds[0]:
                    # The ceiling of the blend in B: weights picked on the TEST window (an oracle, never
                    # used for a reported ranker), to see whether the model adds anything to popularity.
                    for weight in ORACLE_POPULARITY_WEIGHTS:
                        blended = blend_scores(raw, None, recent[cuts.test], BlendWeights(popularity=weight))
                        oracle.append(
                            {
                                "popularity_weight": weight,
                                "B_ndcg@10": evaluate_scores("oracle", blended, test, catalog).metric(
                                    "B", "ndcg@10"
                                ),
                            }
                        )
            run_row(
                label, seed, eps, result, seconds, blend_repeat=weights.repeat, blend_content=weights.content
            )
        # The whole DP system at a total epsilon: two DP popularity releases (validation and test cut)
        # take half the budget, DP-SGD the rest (composed by the RDP accountant).
        for eps in plan.system_epsilons:
            pop_noise = popularity_noise_for(eps / 2, delta, 2)
            pop_mech = [(pop_noise, 1.0, 2)]
            config = calibrated(base, eps, pop_mech)
            bare, result, seconds = fit(config, seed)
            policy = dataclasses.replace(pop_policy, noise_multiplier=pop_noise)
            pop_v = popularity_release(events, catalog, cuts.validation, policy)
            pop_t = popularity_release(events, catalog, cuts.test, policy)
            weights, _ = tune_blend(
                bare.model_scores(val.state), own_val, pop_v, val, catalog, content=content_val
            )
            label = f"DP system eps={eps:g} (DP two-tower + own history + DP popularity)"
            record(label, blend_scores(bare.model_scores(test.state), own_test, pop_t, weights, content_test))
            # ablation: the same DP popularity releases and own history, the two-tower left out
            no_model_w, _ = tune_blend(no_model_val, own_val, pop_v, val, catalog, content=content_val)
            record(
                f"DP system eps={eps:g} without the two-tower (own history + the same DP popularity)",
                blend_scores(no_model_test, own_test, pop_t, no_model_w, content_test),
            )
            total = rdp_epsilon(
                [*pop_mech, (result.noise_multiplier, result.sample_rate, result.steps)], delta
            )
            run_row(
                label,
                seed,
                eps,
                result,
                seconds,
                blend_repeat=weights.repeat,
                blend_popularity=weights.popularity,
                blend_content=weights.content,
                blend_model=weights.model,
                popularity_noise=pop_noise,
                total_epsilon=total,
            )
    if plan.sweep:
        eps = max(plan.epsilons)
        seed = plan.seeds[0]
        base = plan.train_config(seed)
        for change, values in (("plan settings", {}), *SWEEP):
            dim = int(values.get("dim", 64))
            trained = {k: v for k, v in values.items() if k != "dim"}
            bare, result, seconds = fit(
                calibrated(TrainConfig(**{**base.__dict__, **trained}), eps, []), seed, dim
            )
            raw_val, raw = bare.model_scores(val.state), bare.model_scores(test.state)
            weights, _ = tune_blend(raw_val, own_val, None, val, catalog, content=content_val)
            bare_report = evaluate_scores("bare", raw, test, catalog)
            blend_report = evaluate_scores(
                "blend", blend_scores(raw, own_test, None, weights, content_test), test, catalog
            )
            sweep.append(
                {
                    "change": change,
                    "epsilon": result.epsilon,
                    "noise_multiplier": result.noise_multiplier,
                    "steps": result.steps,
                    "A_ndcg@10": bare_report.metric("A", "ndcg@10"),
                    "B_ndcg@10": bare_report.metric("B", "ndcg@10"),
                    "blend_A_ndcg@10": blend_report.metric("A", "ndcg@10"),
                    "seconds": seconds,
                }
            )
    pop_eps = rdp_epsilon([(pop_policy.noise_multiplier, 1.0, 1)], delta)
    return {
        "dataset": name,
        "events": len(events),
        "users": n_users,
        "items": catalog.n_items,
        "test_users": test.n_users,
        "window_days": window,
        "delta": delta,
        "cuts": {k: str(v) for k, v in cuts.__dict__.items()},
        "scores": scores,
        "runs": runs,
        "sweep": sweep,
        "oracle_blend_b": oracle,
        "dp_popularity_epsilon": pop_eps,
        "popularity_cap": pop_policy.cap_per_user,
        "popularity_days": pop_policy.days,
    }


def build_model_for(catalog: Any) -> Any:
    from tasks.model import build_model

    return build_model(catalog)


def _summary(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def tables_for(section: Section, result: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The quality table of one data set; returns mean/spread of NDCG@10 per ranker and variant."""
    table = section.table(
        f"{result['dataset']}: {result['users']:,} users, {result['items']:,} items, {result['events']:,} "
        f"events; test = last {result['window_days']} days ({result['test_users']:,} users); mean ± sd over seeds",
        ["ranker", "A NDCG@10", "A Recall@20", "B NDCG@10", "B Recall@20", "B retention vs no DP"],
    )
    means: dict[str, tuple[float, float]] = {}
    for label, rows in result["scores"].items():
        cells = []
        for key in ("A_ndcg@10", "A_recall@20", "B_ndcg@10", "B_recall@20"):
            mean, sd = _summary([r[key] for r in rows])
            means[f"{label}|{key}"] = (mean, sd)
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        base_label = "two-tower, no DP" + (" + own-history blend" if label.endswith("blend") else "")
        if label.startswith("DP system"):
            base_label = "system, no DP (two-tower + own history + 14 d popularity)"
        retention = None
        if (
            label.startswith(("DP eps", "DP system"))
            and "without" not in label
            and base_label in result["scores"]
        ):
            dp = statistics.fmean(r["B_ndcg@10"] for r in rows)
            plain = statistics.fmean(r["B_ndcg@10"] for r in result["scores"][base_label])
            retention = f"{dp / plain:.0%}" if plain > 0 else None
        table.add(label, *cells, retention)
    return means


def run(ctx: Context) -> Section:
    from tasks.config import get_settings
    from tasks.training import dp_popularity

    pop_policy = dp_popularity(get_settings())
    section = Section(key="quality", title="1. Quality under privacy")
    if ctx.quick:
        datasets = [
            (
                "Online Retail II 2009-2010",
                lambda: online_retail(ctx),
                Plan((0,), (8.0,), epochs=1, batch_size=128),
            )
        ]
    else:
        datasets = [
            (
                "Online Retail II 2009-2010",
                lambda: online_retail(ctx),
                Plan(
                    (0, 1, 2),
                    (1.0, 2.0, 4.0, 8.0),
                    epochs=5,
                    batch_size=128,
                    system_epsilons=(4.0, 8.0),
                    sweep=True,
                ),
            ),
            (
                "synthetic, 100,000 users",
                lambda: synthetic(ctx, 100_000),
                Plan(
                    (0,),
                    (1.0, 2.0, 4.0, 8.0),
                    epochs=1,
                    batch_size=1024,
                    window_days=7,
                    max_eval_users=5_000,
                    lr=3e-3,
                ),
            ),
        ]
    results = []
    for name, load, plan in datasets:
        events, items = load()
        result = evaluate_dataset(name, events, items, plan)
        results.append(result)
        means = tables_for(section, result)
        eps_top = max(plan.epsilons)
        plain_b = means["two-tower, no DP|B_ndcg@10"][0]
        dp_b = means[f"DP eps={eps_top:g}|B_ndcg@10"][0]
        section.goals.append(
            Goal(
                f"{name}: at epsilon {eps_top:g} the DP model keeps >= 90% of non-private NDCG@10 (variant B)",
                plain_b > 0 and dp_b / plain_b >= 0.9,
                f"{dp_b / plain_b:.0%}" if plain_b > 0 else "non-private NDCG@10 is 0",
            )
        )
        baselines = [k for k in result["scores"] if "no privacy" in k or k.startswith("buy again")]
        best = max(baselines, key=lambda k: means[f"{k}|A_ndcg@10"][0])
        dp_blend_a = means[f"DP eps={eps_top:g} + own-history blend|A_ndcg@10"][0]
        best_a = means[f"{best}|A_ndcg@10"][0]
        section.goals.append(
            Goal(
                f"{name}: at epsilon {eps_top:g} the DP model with the blend beats every non-private baseline (A)",
                dp_blend_a > best_a,
                f"{dp_blend_a:.4f} vs best baseline {best} {best_a:.4f}",
            )
        )
        system = f"DP system eps={max(plan.system_epsilons):g} (DP two-tower + own history + DP popularity)"
        if plan.system_epsilons:
            sys_a, sys_b = means[f"{system}|A_ndcg@10"][0], means[f"{system}|B_ndcg@10"][0]
            # the stronger of the two non-private popularity baselines, per variant
            pops = (
                "popularity (30 d, no privacy)",
                f"popularity ({result['popularity_days']} d, no privacy)",
            )
            pop_a = max(means[f"{p}|A_ndcg@10"][0] for p in pops)
            pop_b = max(means[f"{p}|B_ndcg@10"][0] for p in pops)
            again_a = means["buy again (own history + popularity)|A_ndcg@10"][0]
            section.goals.append(
                Goal(
                    f"{name}: at total epsilon {max(plan.system_epsilons):g} the DP system beats non-private "
                    "popularity (best of 30 d and 14 d) in A and B and matches buy again in A",
                    sys_a > pop_a and sys_b > pop_b and sys_a >= again_a,
                    f"A {sys_a:.4f} vs popularity {pop_a:.4f} / buy again {again_a:.4f}; "
                    f"B {sys_b:.4f} vs popularity {pop_b:.4f}",
                )
            )
        if result["sweep"]:
            sweep = section.table(
                f"{name}: what helps the bare DP model at epsilon {max(plan.epsilons):g} (seed {plan.seeds[0]}, "
                "one change at a time from the plan's settings)",
                [
                    "change",
                    "epsilon",
                    "noise multiplier",
                    "steps",
                    "A NDCG@10",
                    "B NDCG@10",
                    "+ blend A NDCG@10",
                    "seconds",
                ],
            )
            for r in result["sweep"]:
                sweep.add(
                    r["change"],
                    r["epsilon"],
                    r["noise_multiplier"],
                    r["steps"],
                    r["A_ndcg@10"],
                    r["B_ndcg@10"],
                    r["blend_A_ndcg@10"],
                    r["seconds"],
                )
        if result["oracle_blend_b"]:
            oracle = section.table(
                f"{name}: does the model add to recent popularity for new items? Non-private two-tower "
                f"(seed {plan.seeds[0]}) + w x exact {result['popularity_days']} d popularity, variant B, w chosen "
                "on the TEST window (an oracle ceiling, not a reported ranker; w = 1e6 is popularity alone)",
                ["popularity weight w", "B NDCG@10"],
            )
            for r in result["oracle_blend_b"]:
                oracle.add(r["popularity_weight"], r["B_ndcg@10"])
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
        eps = list(plan.epsilons)
        series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]] = {}
        for variant in ("A", "B"):
            for suffix, tag in (("", "DP"), (" + own-history blend", "DP + blend")):
                ms = [means[f"DP eps={e:g}{suffix}|{variant}_ndcg@10"] for e in eps]
                series[f"{tag}, variant {variant}"] = (eps, [m[0] for m in ms], [m[1] for m in ms])
            if plan.system_epsilons:
                sys_eps = list(plan.system_epsilons)
                ms = [
                    means[
                        f"DP system eps={e:g} (DP two-tower + own history + DP popularity)|{variant}_ndcg@10"
                    ]
                    for e in sys_eps
                ]
                series[f"DP system (total eps), variant {variant}"] = (
                    sys_eps,
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
            reference={
                "no DP, B": plain_b,
                "no DP + blend, A": means["two-tower, no DP + own-history blend|A_ndcg@10"][0],
            },
        )
        section.figures.append(link)
        config = plan.train_config(plan.seeds[0])
        section.notes.append(
            f"{name}: {plan.epochs} epochs, {plan.batch_size} expected users per step (Poisson), lr {config.lr:g}, "
            f"clip {config.max_grad_norm:g}, cap {config.cap_k} positives and {config.n_negatives} sampled "
            "negatives per user, model dim 64; "
            f"seeds {list(plan.seeds)}; evaluation users capped at {plan.max_eval_users or 'none'}"
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
        "DP rows 'DP eps=...': the epsilon is the model's alone (the own-history blend costs nothing)",
    ]
    section.data = {"datasets": results, "plans": {name: plan.__dict__ for name, _, plan in datasets}}
    return section
