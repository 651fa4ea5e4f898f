"""Issue 17 item 2: does the item tower learn from behaviour when the titles say nothing?

The synthetic shop with ``titles="codes"`` (each title is the item's code, no category: the default
shop's events, 1,500 users, 400 items, 40 days), the pipeline's protocol (:class:`tasks.dataset.Cuts`
with ``Settings.eval_days``: validation window, then test window; per-user training cuts before the
validation cut, as :func:`benchmarks.quality.per_user_training_set` builds them), full ranking, variant
A (repeats included) and B (items new to the user), NDCG@10.

Rows: the shop's alternatives (popularity and item-to-item co-occurrence without privacy, one DP
popularity release as the pipeline draws it), the bare two-tower without behaviour vectors (title
vectors of codes only) and with the DP co-occurrence behaviour vectors of
:func:`tasks.training.cooccurrence_release` / :func:`tasks.training.behaviour_for_catalog`, private
and non-private (the pipeline's twin reads the same DP vectors; "exact vectors" is a non-private
reference built from the exact, uncapped counts). Privacy: delta = 1 / (10 users), user level, the
ledger's RDP accountant; a DP model's total epsilon covers DP-SGD and its co-occurrence release
(a Gaussian of noise multiplier ``SHOPREC_COOC_NOISE_MULTIPLIER`` at rate 1, composed by
:func:`tasks.privacy.accounting.calibrate_noise`).

The behaviour settings (items per user k, vector dimensions) are chosen on the VALIDATION window
(``--sweep``); the test window only reports the chosen setting over ``--seeds``.

    PYTHONPATH=. nice -n 10 python -m benchmarks.behaviour_codes --sweep --seeds 0 --out result.json
    # more seeds of the chosen setting, only some model rows (each fit takes minutes on 2 CPU cores)
    PYTHONPATH=. nice -n 10 python -m benchmarks.behaviour_codes --seeds 1,2 --k 10 --dim 32 \
        --rows dp_behaviour,twin_behaviour
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.quality import per_user_training_set, persistent_cache, read_landing

SWEEP_K: tuple[int, ...] = (10, 20, 40)
SWEEP_DIM: tuple[int, ...] = (32, 64, 128)


def _metrics(report: Any) -> dict[str, float]:
    return {f"{v}_ndcg@10": round(report.metric(v, "ndcg@10"), 4) for v in ("A", "B")}


MODEL_ROWS: tuple[str, ...] = ("dp_titles", "dp_behaviour", "twin_titles", "twin_behaviour", "twin_exact")


def run(
    seeds: Sequence[int],
    epsilon: float,
    sweep: bool,
    work: Path,
    *,
    rows_wanted: Sequence[str] = MODEL_ROWS,
    chosen: tuple[int, int] | None = None,
) -> dict[str, Any]:
    from tasks.baselines import broadcast, cooccurrence_scores, popularity_counts
    from tasks.catalog import BlendWeights, build_item_catalog
    from tasks.config import get_settings
    from tasks.dataset import Cuts
    from tasks.embeddings import embed_items, load_pretrained_encoder
    from tasks.evaluation import evaluate_scores, temporal_split
    from tasks.model import Recommender
    from tasks.privacy.accounting import calibrate_noise, rdp_epsilon, sampled_gaussians
    from tasks.privacy.cooccurrence import CooccurrenceCounts, behaviour_vectors, exact_cooccurrence
    from tasks.sources import SyntheticConfig, generate
    from tasks.training import (
        behaviour_for_catalog,
        cooccurrence_domain,
        cooccurrence_release,
        dp_cooccurrence,
        dp_popularity,
        fit_model,
        popularity_release,
        train_config,
        training_examples,
        twin_config,
    )

    settings = get_settings().model_copy(update={"cooc_enabled": True})
    landing = work / "landing"
    generate(SyntheticConfig(titles="codes"), landing)
    events, items = read_landing(landing)
    encoder = load_pretrained_encoder(device="cpu", package=settings.encoder_package)
    embedded = embed_items(items[["item_id", "title"]], persistent_cache(), encoder)
    catalog = build_item_catalog(items, embedded.frame, encoder_id=encoder.model_id)
    as_of = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    window, history = settings.eval_days, settings.history_length
    cuts = Cuts.from_end(as_of, window)
    n_users = events["user_id"].nunique()
    delta = 1.0 / (10 * n_users)
    state, labels = per_user_training_set(events, cuts.validation, history, window)
    splits = {
        "validation": temporal_split(events, catalog, cuts.validation, window, history),
        "test": temporal_split(events, catalog, cuts.test, window, history),
    }
    ends = {"validation": cuts.validation, "test": cuts.test}
    rows: list[dict[str, Any]] = []

    def record(label: str, window_name: str, scores: np.ndarray, **extra: Any) -> dict[str, float]:
        metrics = _metrics(evaluate_scores(label, scores, splits[window_name], catalog))
        rows.append({"ranker": label, "window": window_name, **metrics, **extra})
        print(json.dumps(rows[-1]), flush=True)
        return metrics

    for name, split in splits.items():
        end = ends[name]
        record(
            "popularity 30 d (no privacy)",
            name,
            broadcast(popularity_counts(events, catalog, end, end - pd.Timedelta(days=30)), split),
        )
        record(
            "item-to-item co-occurrence (no privacy)", name, cooccurrence_scores(events, catalog, split, end)
        )
    pop_policy = dp_popularity(settings)
    pop_epsilon = rdp_epsilon([(pop_policy.noise_multiplier, 1.0, 1)], delta)
    for seed in seeds:
        for name, split in splits.items():
            record(
                "DP popularity (one release)",
                name,
                broadcast(popularity_release(events, catalog, ends[name], pop_policy), split),
                seed=seed,
                epsilon=pop_epsilon,
            )

    n_train = len(training_examples(settings, state, labels, catalog)[0])
    base = train_config(settings, n_users=n_train)  # the pipeline's schedule for these users
    q, steps = base.sample_rate(n_train), base.steps(n_train)

    def fit(vectors: np.ndarray | None, seed: int, private: bool, cooc_noise: float | None) -> Any:
        """The pipeline's fit (tasks.training.fit_model: model_for + train) on the catalog with
        ``vectors`` as behaviour columns; the private run's noise fits ``epsilon`` with the release."""
        joined = catalog.with_behaviour(vectors)
        examples, _ = training_examples(settings.model_copy(update={"seed": seed}), state, labels, joined)
        also = [] if cooc_noise is None else [(cooc_noise, 1.0, 1)]
        config = dataclasses.replace(base, seed=seed, noise_seed=None)
        if private:
            config = dataclasses.replace(
                config,
                noise_multiplier=calibrate_noise(epsilon, delta, q, steps, existing=sampled_gaussians(also)),
            )
        else:
            config = twin_config(settings, config)
        model, result = fit_model(settings, joined, examples, config, delta=delta if private else None)
        total = (
            rdp_epsilon([*also, (result.noise_multiplier, result.sample_rate, result.steps)], delta)
            if private
            else None
        )
        rec = Recommender(model, joined, weights=BlendWeights(), popularity=None, history_length=history)
        return rec, total

    def evaluate_model(label: str, rec: Any, windows: Sequence[str], **extra: Any) -> dict[str, Any]:
        return {w: record(label, w, rec.model_scores(splits[w].state), **extra) for w in windows}

    def dp_vectors(k: int, dim: int) -> np.ndarray:
        policy = dataclasses.replace(dp_cooccurrence(settings), cap_per_user=k)  # type: ignore[arg-type]
        domain = cooccurrence_domain(np.ones(catalog.n_items), settings.cooc_max_items)
        return behaviour_for_catalog(
            catalog, cooccurrence_release(events, catalog, cuts.validation, policy, domain), dim
        )

    nm = settings.cooc_noise_multiplier
    chosen = chosen or (settings.cooc_cap_per_user, settings.cooc_dim)
    if sweep:  # behaviour settings on the validation window only, first seed
        best = -1.0
        for k in SWEEP_K:
            for dim in SWEEP_DIM:
                rec, total = fit(dp_vectors(k, dim), seeds[0], True, nm)
                got = evaluate_model(
                    f"sweep: DP two-tower + DP behaviour k={k} dim={dim}",
                    rec,
                    ["validation"],
                    seed=seeds[0],
                    epsilon=total,
                    k=k,
                    dim=dim,
                )
                if got["validation"]["B_ndcg@10"] > best:
                    best, chosen = got["validation"]["B_ndcg@10"], (k, dim)
        print(f"chosen on validation: k={chosen[0]} dim={chosen[1]} (B NDCG@10 {best:.4f})", flush=True)
    k, dim = chosen
    # the non-private reference: every item of every user, no noise, the release's window
    seen = dp_cooccurrence(settings).window(events, cuts.validation)  # type: ignore[union-attr]
    exact_counts = exact_cooccurrence(seen, list(catalog.item_ids), 10**6)
    exact = behaviour_vectors(CooccurrenceCounts(catalog.item_ids, exact_counts), dim)
    both = ["validation", "test"]
    for seed in seeds:
        vectors = dp_vectors(k, dim)  # fresh noise per seed
        if "dp_titles" in rows_wanted:
            rec, total = fit(None, seed, True, None)
            evaluate_model(f"DP two-tower, titles only, eps {epsilon:g}", rec, both, seed=seed, epsilon=total)
        if "dp_behaviour" in rows_wanted:
            rec, total = fit(vectors, seed, True, nm)
            evaluate_model(
                f"DP two-tower + DP behaviour (k={k}, dim={dim}), total eps {epsilon:g}",
                rec,
                both,
                seed=seed,
                epsilon=total,
            )
        if "twin_titles" in rows_wanted:
            rec, _ = fit(None, seed, False, None)
            evaluate_model("non-private twin, titles only", rec, both, seed=seed)
        if "twin_behaviour" in rows_wanted:
            rec, _ = fit(vectors, seed, False, None)
            evaluate_model("non-private twin + the same DP behaviour vectors", rec, both, seed=seed)
        if "twin_exact" in rows_wanted:
            rec, _ = fit(exact, seed, False, None)
            evaluate_model("non-private twin + exact behaviour vectors (no privacy)", rec, both, seed=seed)
    return {
        "shop": "SyntheticConfig(titles='codes')",
        "users": n_users,
        "items": catalog.n_items,
        "delta": delta,
        "cuts": {key: str(v) for key, v in dataclasses.asdict(cuts).items()},
        "chosen": {"k": k, "dim": dim, "cooc_noise_multiplier": nm},
        "train": {"sample_rate": q, "steps": steps, "train_users": n_train},
        "rows": rows,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> str:
    """Mean (sd over seeds) per ranker and window."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["ranker"], row["window"]), []).append(row)
    lines = []
    for (ranker, window), group in groups.items():
        cells = []
        for metric in ("A_ndcg@10", "B_ndcg@10"):
            values = [g[metric] for g in group]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{metric} {statistics.fmean(values):.4f} (sd {sd:.4f}, n {len(values)})")
        lines.append(f"{window:10s} | {ranker} | " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--rows", default=",".join(MODEL_ROWS), help="model rows per seed: " + ", ".join(MODEL_ROWS)
    )
    parser.add_argument(
        "--k", type=int, default=None, help="items per user (default: the sweep's or Settings)"
    )
    parser.add_argument("--dim", type=int, default=None, help="behaviour dimensions (as --k)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    if unknown := set(rows) - set(MODEL_ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose among {', '.join(MODEL_ROWS)}")
    chosen = (args.k, args.dim) if args.k and args.dim else None
    with tempfile.TemporaryDirectory() as work:
        result = run(seeds, args.epsilon, args.sweep, Path(work), rows_wanted=rows, chosen=chosen)
    print(summarise(result["rows"]))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
