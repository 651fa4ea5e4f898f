"""Benchmark 1 (quality under privacy): NDCG@10 and Recall@20 of baselines, the non-private two-tower
model and user-level DP-SGD models at several epsilons, with and without the own-history blend.

Protocol (:mod:`tasks.evaluation`): temporal split at the data's end ``as_of`` with
:meth:`tasks.training.Cuts.from_end`: test truth ``[as_of - W, as_of)`` (W = 28 days on Online Retail
II, 7 days on the 45-day synthetic shop), blend tuning on the W days before; the training set is built
as ``run_training`` builds it (:func:`tasks.training.per_user_cuts`: each user's state at their own cut,
labels from the cut to the validation cut), with the state computed from the events instead of Feast.
Full ranking over the catalog, variant A (repeats included) and B (only items new to the user).

* data: the full Online Retail II 2009-2010 file through :func:`tasks.sources.load_online_retail`
  (events read straight from the landing files: no pseudonymisation is needed for an offline score),
  and in the full run a synthetic shop of 100,000 users;
* privacy: delta = 1 / (10 N_users), user-level, RDP accountant (:func:`tasks.training.noise_for_budget`
  calibrates the noise multiplier for the whole run); the own-history blend uses only the user's own
  purchases (no privacy cost), so the DP rows' epsilon covers everything they release;
* the DP popularity baseline is one Gaussian release (noise multiplier ``POPULARITY_NOISE``, at most
  ``POPULARITY_CAP`` items per user), reported with its own epsilon.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import REPO_ROOT, Context, Goal, Section, line_plot, online_retail_file, stopwatch


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]
    epsilons: tuple[float, ...]
    epochs: int
    batch_size: int
    window_days: int = 28
    max_eval_users: int | None = None  # evaluate on a seeded sample of the split's users


def per_user_training_set(
    events: pd.DataFrame, end: pd.Timestamp, history: int
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(state, labels) as ``run_training`` builds them, each user's state at their own cut."""
    from tasks.training import per_user_cuts, purchases_after_cuts, user_state_at

    user_cuts = per_user_cuts(events, end)
    parts = []
    for cut, group in user_cuts.groupby("cut"):
        mine = events[events["user_id"].isin(set(group["user_id"]))]
        parts.append(user_state_at(mine, pd.Timestamp(cut), history))
    state = pd.concat(parts, ignore_index=True).sort_values("user_id", kind="stable")
    state = state[state["recent_items"].map(len) > 0].reset_index(drop=True)
    return state, purchases_after_cuts(events, user_cuts, end)


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
    home = Path(os.environ.get("SHOPREC_HOME", REPO_ROOT / ".shoprec"))
    return home / "benchmarks" / "cache"


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


def evaluate_dataset(name: str, events: pd.DataFrame, items: pd.DataFrame, plan: Plan) -> dict[str, Any]:
    """Every ranker's metrics on the test window, per seed; plus what the DP runs spent."""
    from tasks.baselines import broadcast, buy_again_scores, cooccurrence_scores, popularity_counts
    from tasks.embeddings import embed_items, load_pretrained_encoder
    from tasks.evaluation import evaluate_scores, temporal_split, tune_blend
    from tasks.model import BlendWeights, Recommender, blend_scores, build_item_catalog, own_purchase_matrix
    from tasks.privacy import popularity_mechanism
    from tasks.training import (
        POPULARITY_CAP,
        POPULARITY_NOISE,
        Cuts,
        TrainConfig,
        build_examples,
        noise_for_budget,
        popularity_release,
        rdp_epsilon,
        train,
    )

    history = 20
    encoder = load_pretrained_encoder(device="cpu")
    embedded = embed_items(items[["item_id", "title"]], persistent_cache(), encoder)
    catalog = build_item_catalog(items, embedded.frame, encoder_id=encoder.model_id)
    as_of = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    window = plan.window_days
    cuts = Cuts.from_end(as_of, window)
    n_users = events["user_id"].nunique()
    delta = 1.0 / (10 * n_users)
    state, labels = per_user_training_set(events, cuts.validation, history)
    val = sample_split(temporal_split(events, catalog, cuts.validation, window, history), plan.max_eval_users)
    test = sample_split(temporal_split(events, catalog, cuts.test, window, history), plan.max_eval_users)
    own_val, own_test = own_purchase_matrix(val.state, catalog), own_purchase_matrix(test.state, catalog)

    scores: dict[str, list[dict[str, float]]] = {}

    def record(label: str, matrix: np.ndarray) -> None:
        report = evaluate_scores(label, matrix, test, catalog)
        scores.setdefault(label, []).append(
            {f"{v}_{m}": report.metric(v, m) for v in ("A", "B") for m in ("ndcg@10", "recall@20")}
        )

    popularity = popularity_counts(events, catalog, cuts.test, cuts.test - pd.Timedelta(days=30))
    record("popularity (30 d, no privacy)", broadcast(popularity, test))
    record("item-to-item co-occurrence (no privacy)", cooccurrence_scores(events, catalog, test, cuts.test))
    record("buy again (own history + popularity)", buy_again_scores(test, catalog, popularity))
    runs: list[dict[str, Any]] = []
    for seed in plan.seeds:
        record("DP popularity", broadcast(popularity_release(events, catalog, cuts.test, seed), test))
        examples, _ = build_examples(
            state, labels, catalog, history_length=history, cap_k=20, n_negatives=64, seed=seed
        )
        base = TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, seed=seed, n_negatives=64)
        variants: list[tuple[str, TrainConfig, float | None]] = [
            ("two-tower, no DP", TrainConfig(**{**base.__dict__, "private": False}), None)
        ]
        q, steps = base.sample_rate(len(examples)), base.steps(len(examples))
        for eps in plan.epsilons:
            noise = noise_for_budget(eps, delta, q, steps)
            variants.append(
                (f"DP eps={eps:g}", TrainConfig(**{**base.__dict__, "noise_multiplier": noise}), eps)
            )
        for label, config, eps in variants:
            import torch

            torch.manual_seed(seed)
            model = build_model_for(catalog)
            with stopwatch() as elapsed:
                result = train(model, examples, config, delta=delta if config.private else None)
            bare = Recommender(
                model, catalog, weights=BlendWeights(), popularity=None, history_length=history
            )
            weights, _ = tune_blend(
                bare.model_scores(val.state), own_val, None, val, catalog, popularity_grid=(0.0,)
            )
            raw = bare.model_scores(test.state)
            record(label, raw)
            record(f"{label} + own-history blend", blend_scores(raw, own_test, None, weights))
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
                    "seconds": elapsed(),
                    "blend_repeat": weights.repeat,
                }
            )
    pop_eps = rdp_epsilon([(POPULARITY_NOISE, 1.0, 1)], delta)
    _ = popularity_mechanism  # the pipeline's mechanism of the same release (ledger-charged there)
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
        "dp_popularity_epsilon": pop_eps,
        "popularity_cap": POPULARITY_CAP,
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
        retention = None
        if label.startswith("DP eps") and base_label in result["scores"]:
            dp = statistics.fmean(r["B_ndcg@10"] for r in rows)
            plain = statistics.fmean(r["B_ndcg@10"] for r in result["scores"][base_label])
            retention = f"{dp / plain:.0%}" if plain > 0 else None
        table.add(label, *cells, retention)
    return means


def run(ctx: Context) -> Section:
    section = Section(key="quality", title="1. Quality under privacy")
    if ctx.quick:
        datasets = [
            (
                "Online Retail II 2009-2010",
                lambda: online_retail(ctx),
                Plan((0,), (8.0,), epochs=1, batch_size=64),
            )
        ]
    else:
        datasets = [
            (
                "Online Retail II 2009-2010",
                lambda: online_retail(ctx),
                Plan((0, 1, 2), (1.0, 2.0, 4.0, 8.0), epochs=3, batch_size=64),
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
                    max_eval_users=10_000,
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
                r["epsilon"],
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
        section.notes.append(
            f"{name}: {plan.epochs} epochs, {plan.batch_size} expected users per step (Poisson), clip 1.0, "
            "cap 20 positives and 64 sampled negatives per user, model dim 64; "
            f"seeds {list(plan.seeds)}; evaluation users capped at {plan.max_eval_users or 'none'}"
        )
    section.notes += [
        "blend: z-scored model score + w * log1p(own purchase count), w tuned on the validation window "
        "(the user's own data only: no privacy cost)",
    ]
    section.data = {"datasets": results, "plans": {name: plan.__dict__ for name, _, plan in datasets}}
    return section
