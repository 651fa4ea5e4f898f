"""Baseline rankers on the evaluation split: each returns ``[U, N]`` scores over the catalog.

* global popularity, whole history or a recent window (computed without privacy: a reference only);
* DP popularity: noisy counts released by the privacy ledger's mechanism (charged there);
* item-to-item co-occurrence (users who bought both; no privacy: a reference only);
* "buy again": the user's own past purchase counts, ties broken by popularity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.catalog import PAD, ItemCatalog, own_purchase_matrix
from tasks.contracts import PURCHASE
from tasks.evaluation import EvalSplit


def _purchases(events: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
    buys = events[(events["event_type"] == PURCHASE) & (events["event_timestamp"] < end)]
    if start is not None:
        buys = buys[buys["event_timestamp"] >= start]
    return buys


def popularity_counts(
    events: pd.DataFrame, catalog: ItemCatalog, end: pd.Timestamp, start: pd.Timestamp | None = None
) -> np.ndarray:
    """``[N]`` number of distinct buyers per catalog item in ``[start, end)`` (no privacy)."""
    buys = _purchases(events, start, end).drop_duplicates(["user_id", "item_id"])
    counts = buys["item_id"].value_counts()
    idx = catalog.index_of(counts.index.astype(str).tolist())
    out = np.zeros(catalog.n_items, dtype=np.float64)
    keep = idx != PAD
    out[idx[keep] - 1] = counts.to_numpy(dtype=np.float64)[keep]
    return out


def counts_to_catalog(released: pd.DataFrame, catalog: ItemCatalog) -> np.ndarray:
    """``[N]`` vector from a released (item_id, count) frame; noisy negatives are clipped to 0."""
    out = np.zeros(catalog.n_items, dtype=np.float64)
    if released.empty:
        return out
    grouped = released.groupby("item_id")["count"].sum()
    idx = catalog.index_of(grouped.index.astype(str).tolist())
    keep = idx != PAD
    out[idx[keep] - 1] = np.clip(grouped.to_numpy(dtype=np.float64)[keep], 0, None)
    return out


def broadcast(item_scores: np.ndarray, split: EvalSplit) -> np.ndarray:
    """The same item scores for every user of the split."""
    return np.broadcast_to(item_scores, (split.n_users, len(item_scores))).copy()


def buy_again_scores(split: EvalSplit, catalog: ItemCatalog, popularity: np.ndarray) -> np.ndarray:
    """Own purchase counts first, popularity (scaled below one purchase) for the rest."""
    own = own_purchase_matrix(split.state, catalog).astype(np.float64)
    pop = popularity / (popularity.max() + 1.0)
    return own + pop[None, :]


def cooccurrence_scores(
    events: pd.DataFrame, catalog: ItemCatalog, split: EvalSplit, end: pd.Timestamp
) -> np.ndarray:
    """Sum over the user's purchased items of how many users bought both items (no privacy)."""
    buys = _purchases(events, None, end).drop_duplicates(["user_id", "item_id"])
    idx = catalog.index_of(buys["item_id"].astype(str).tolist())
    buys = buys.assign(pos=idx - 1)[idx != PAD]
    users = buys["user_id"].astype("category").cat.codes.to_numpy()
    incidence = np.zeros((int(users.max()) + 1 if len(users) else 0, catalog.n_items), dtype=np.float32)
    incidence[users, buys["pos"].to_numpy()] = 1.0
    co = incidence.T @ incidence
    np.fill_diagonal(co, 0.0)
    own = (own_purchase_matrix(split.state, catalog) > 0).astype(np.float32)
    return (own @ co).astype(np.float64) + 1e-6 * broadcast(incidence.sum(axis=0), split)
