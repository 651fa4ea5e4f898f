"""Offline evaluation: temporal split, full ranking over the catalog, two variants of the truth.

Protocol: user state (features, history, own purchases) as of the cut ``T``; truth = the items each
user bought in ``[T, T + test_days)``. Every user is ranked against the whole catalog.

* Variant **A**: every item the user bought in the test window, repeat purchases included.
* Variant **B**: only items new to the user: items bought before ``T`` are removed from both the
  ranking and the truth (users left with no truth are dropped from B).

Metrics at K = 10 and 20: Recall@K (hits / |truth|), NDCG@K (binary gains), HitRate@K, catalog
coverage (share of the catalog in anyone's top K) and exposure by category (share of top-K slots).
A leave-one-out protocol (each user's last purchase held out) is available as :func:`leave_one_out_split`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from tasks.catalog import PAD, BlendWeights, ItemCatalog, blend_scores, own_purchase_matrix
from tasks.contracts import PURCHASE
from tasks.dataset import purchases_between
from tasks.features import user_state_at

KS: Final[tuple[int, ...]] = (10, 20)
VARIANTS: Final[tuple[str, ...]] = ("A", "B")
# Popularity and content weights relative to the z-scored model score at weight 1; then the model's own
# weight, down to 0 (the validation window may find that the model adds nothing to the other signals).
BLEND_GRID: Final[tuple[float, ...]] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
MODEL_GRID: Final[tuple[float, ...]] = (1.0, 0.5, 0.25, 0.125, 0.0)


@dataclass(frozen=True)
class EvalSplit:
    """Users' state at ``cut`` and their truth after it, aligned by row."""

    cut: pd.Timestamp
    end: pd.Timestamp
    state: pd.DataFrame  # user_state_at(events, cut) rows for the evaluated users
    truth: tuple[np.ndarray, ...]  # catalog positions (0-based) bought in [cut, end)

    @property
    def n_users(self) -> int:
        return len(self.truth)


def temporal_split(
    events: pd.DataFrame, catalog: ItemCatalog, cut: pd.Timestamp, test_days: int, history_length: int
) -> EvalSplit:
    """Users with history before ``cut`` who bought a catalog item in ``[cut, cut + test_days)``;
    their state is computed from the lake (:func:`tasks.features.user_state_at`, what Feast serves)."""
    end = cut + pd.Timedelta(days=test_days)
    return temporal_split_from_state(events, catalog, user_state_at(events, cut, history_length), cut, end)


def temporal_split_from_state(
    events: pd.DataFrame, catalog: ItemCatalog, state: pd.DataFrame, cut: pd.Timestamp, end: pd.Timestamp
) -> EvalSplit:
    """Split for users whose state as of ``cut`` is given (e.g. from Feast), truth from ``[cut, end)``."""
    labels = purchases_between(events, cut, end)
    rows, truth = [], []
    for i, user in enumerate(state["user_id"]):
        idx = catalog.index_of(labels.get(str(user), []))
        idx = idx[idx != PAD] - 1
        if len(idx):
            rows.append(i)
            truth.append(np.unique(idx))
    return EvalSplit(cut=cut, end=end, state=state.iloc[rows].reset_index(drop=True), truth=tuple(truth))


def leave_one_out_split(events: pd.DataFrame, catalog: ItemCatalog, history_length: int) -> EvalSplit:
    """Each user's last purchased item is the truth; state from all events strictly before it."""
    buys = events[events["event_type"] == PURCHASE].sort_values("event_timestamp", kind="stable")
    last = buys.groupby("user_id").tail(1)
    states, truth = [], []
    for row in last.itertuples(index=False):
        idx = catalog.index_of([str(row.item_id)])
        if idx[0] == PAD:
            continue
        own = events[events["user_id"] == row.user_id]
        state = user_state_at(own, row.event_timestamp, history_length)
        if state.empty:
            continue
        states.append(state)
        truth.append(idx - 1)
    if not states:
        raise ValueError("no user has a purchase after some earlier event")
    cut = pd.Timestamp(last["event_timestamp"].min())
    end = pd.Timestamp(last["event_timestamp"].max())
    return EvalSplit(cut=cut, end=end, state=pd.concat(states, ignore_index=True), truth=tuple(truth))


@dataclass(frozen=True)
class VariantMetrics:
    users: int
    metrics: dict[str, float]  # recall@K, ndcg@K, hit@K, coverage@K
    exposure_by_category: dict[str, float]  # share of top-10 slots


@dataclass(frozen=True)
class EvalReport:
    """Metrics of one ranker on one split, in both variants."""

    name: str
    variants: dict[str, VariantMetrics]

    def metric(self, variant: str, name: str) -> float:
        return self.variants[variant].metrics[name]

    def flat(self) -> dict[str, float]:
        """``{"A_ndcg_at_10": ...}``: MLflow-friendly metric names."""
        return {
            f"{v}_{k.replace('@', '_at_')}": val
            for v, vm in self.variants.items()
            for k, val in vm.metrics.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "variants": {v: asdict(m) for v, m in self.variants.items()}}


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(
    scores: np.ndarray, truth: Sequence[np.ndarray], catalog: ItemCatalog, ks: Sequence[int] = KS
) -> VariantMetrics:
    """Full-catalog ranking metrics for ``[U, N]`` scores (``-inf`` = excluded) against truth sets."""
    if len(truth) == 0:
        nan = float("nan")
        empty = {f"{name}@{k}": nan for k in ks for name in ("recall", "ndcg", "hit", "coverage")}
        return VariantMetrics(users=0, metrics=empty, exposure_by_category={})
    kmax = min(max(ks), scores.shape[1])
    top = _top_k(scores, kmax)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    metrics: dict[str, float] = {}
    hits = np.zeros((len(truth), kmax), dtype=bool)
    for u, items in enumerate(truth):
        hits[u] = np.isin(top[u], items)
    sizes = np.array([len(t) for t in truth], dtype=np.float64)
    for k in ks:
        h = hits[:, : min(k, kmax)]
        dcg = (h * discounts[: h.shape[1]]).sum(axis=1)
        idcg = np.array([discounts[: int(min(s, k, kmax))].sum() for s in sizes])
        metrics[f"recall@{k}"] = float((h.sum(axis=1) / sizes).mean())
        metrics[f"ndcg@{k}"] = float((dcg / idcg).mean())
        metrics[f"hit@{k}"] = float(h.any(axis=1).mean())
        metrics[f"coverage@{k}"] = float(len(np.unique(top[:, :k])) / catalog.n_items)
    cats = np.asarray(catalog.categories)[catalog.category_index[top[:, :10]]]
    values, counts = np.unique(cats, return_counts=True)
    exposure = {str(c): float(n / cats.size) for c, n in zip(values, counts, strict=True)}
    return VariantMetrics(users=len(truth), metrics=metrics, exposure_by_category=exposure)


def evaluate_scores(name: str, scores: np.ndarray, split: EvalSplit, catalog: ItemCatalog) -> EvalReport:
    """Both variants for ``[U, N]`` scores of the split's users (row order of ``split.state``)."""
    if scores.shape != (split.n_users, catalog.n_items):
        raise ValueError(f"scores have shape {scores.shape}, expected {(split.n_users, catalog.n_items)}")
    variant_a = ranking_metrics(scores, split.truth, catalog)
    owned, rows, truth_b = _variant_b_truth(split, catalog)
    variant_b = ranking_metrics(np.where(owned, -np.inf, scores)[rows], truth_b, catalog)
    return EvalReport(name=name, variants={"A": variant_a, "B": variant_b})


def _variant_b_truth(
    split: EvalSplit, catalog: ItemCatalog
) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    """(``[U, N]`` already bought, rows of users with a new item in the truth, their new items)."""
    owned = own_purchase_matrix(split.state, catalog) > 0
    rows, truth_b = [], []
    for u, items in enumerate(split.truth):
        new = items[~owned[u, items]]
        if len(new):
            rows.append(u)
            truth_b.append(new)
    return owned, rows, truth_b


Scorer = Callable[[EvalSplit], np.ndarray]


def compare(scorers: dict[str, Scorer], split: EvalSplit, catalog: ItemCatalog) -> dict[str, EvalReport]:
    """Evaluate several rankers on the same split."""
    return {name: evaluate_scores(name, scorer(split), split, catalog) for name, scorer in scorers.items()}


def retention(private: EvalReport, non_private: EvalReport, variant: str, metric: str = "ndcg@10") -> float:
    """Utility retention: DP metric / non-private metric (same model, same loop, same split)."""
    base = non_private.metric(variant, metric)
    return private.metric(variant, metric) / base if base > 0 else float("nan")


def _variant_b_ndcg10(split: EvalSplit, catalog: ItemCatalog) -> Callable[[np.ndarray], float]:
    """NDCG@10 in variant B of ``[U, N]`` scores, with the split's masks computed once."""
    owned, rows, truth_b = _variant_b_truth(split, catalog)
    mask = owned[rows]

    def ndcg(scores: np.ndarray) -> float:
        masked = np.where(mask, -np.inf, scores[rows])
        return ranking_metrics(masked, truth_b, catalog, ks=(10,)).metrics["ndcg@10"]

    return ndcg


def tune_blend(
    model_scores: np.ndarray,
    own_counts: np.ndarray | None,
    popularity: np.ndarray | None,
    split: EvalSplit,
    catalog: ItemCatalog,
    *,
    content: np.ndarray | None = None,
    repeat_grid: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
    popularity_grid: Sequence[float] = BLEND_GRID,
    content_grid: Sequence[float] = BLEND_GRID,
    model_grid: Sequence[float] = MODEL_GRID,
) -> tuple[BlendWeights, float]:
    """Blend weights tuned on a validation split, in two stages.

    The popularity, content and model weights only order items new to the user, so they are chosen
    on variant B, by coordinate ascent from the model alone: popularity, then content with it fixed,
    then popularity again, then the model's weight (only when another signal is there to take its
    place). With them fixed, the repeat weight is chosen on variant A. Returns the weights and the
    mean of the two NDCG@10 values reached (a variant without users is left out).
    """
    tuned = {"popularity": 0.0, "content": 0.0, "model": 1.0}
    best_b = float("nan")
    axes: list[tuple[str, Sequence[float]]] = []
    if popularity is not None:
        axes.append(("popularity", popularity_grid))
    if content is not None:
        axes.append(("content", content_grid))
    if popularity is not None and content is not None:
        axes.append(("popularity", popularity_grid))
    if axes:
        axes.append(("model", model_grid))
        ndcg_b = _variant_b_ndcg10(split, catalog)
        best_b = -1.0
        for axis, grid in axes:
            for weight in grid:
                trial = {**tuned, axis: weight}
                if not any(trial.values()):
                    continue  # all weights 0: no ranking at all
                value = ndcg_b(blend_scores(model_scores, None, popularity, BlendWeights(**trial), content))
                if value > best_b:
                    tuned, best_b = trial, value
    rep_w, best_a = 0.0, -1.0
    for weight in repeat_grid:
        weights = BlendWeights(repeat=weight, **tuned)
        report = evaluate_scores(
            "blend", blend_scores(model_scores, own_counts, popularity, weights, content), split, catalog
        )
        if report.variants["A"].users and report.metric("A", "ndcg@10") > best_a:
            rep_w, best_a = weight, report.metric("A", "ndcg@10")
            if not axes:
                best_b = report.metric("B", "ndcg@10")
    values = [v for v in (best_a, best_b) if v == v and v >= 0]  # drop NaN (no users) and "not tuned"
    return BlendWeights(repeat=rep_w, **tuned), sum(values) / max(1, len(values))
