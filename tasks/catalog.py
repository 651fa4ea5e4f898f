"""What the model reads, in numpy: the public item catalog, the user-feature transform, history
indices, the user's own purchase counts and the score blend (no torch, so evaluation and the
baselines import this without loading torch; :mod:`tasks.model` holds the torch towers).

Index 0 of every item table is padding; catalog item ``i`` (0-based) has model index ``i + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import pandas as pd

from tasks.features import COUNT_COLUMNS

# the numeric columns of the Feast user features (tasks.features.USER_FEATURES_SCHEMA) the model reads
USER_COUNT_FEATURES: Final[tuple[str, ...]] = (*COUNT_COLUMNS, "spend_30d", "avg_basket_value_30d")
USER_FEATURE_COLUMNS: Final[tuple[str, ...]] = (*USER_COUNT_FEATURES, "days_since_last_purchase")
N_USER_FEATURES: Final = len(USER_FEATURE_COLUMNS) + 1  # + "has purchased before" indicator
PAD: Final = 0
UNKNOWN_CATEGORY: Final = "<unknown>"


@dataclass(frozen=True)
class ItemCatalog:
    """Public item-tower inputs, aligned by position: ``item_ids[i]`` has model index ``i + 1``."""

    item_ids: tuple[str, ...]
    text: np.ndarray  # float32 [n_items, text_dim], frozen encoder output
    category_index: np.ndarray  # int64 [n_items], index into ``categories`` (+1 at lookup, 0 = pad)
    price_bucket: np.ndarray  # int64 [n_items] in [0, n_price_buckets)
    categories: tuple[str, ...]
    price_edges: tuple[float, ...]
    encoder_id: str = "unknown"
    # float32 [n_items, b] behaviour vectors from a DP co-occurrence release (ledger-charged,
    # tasks.privacy.cooccurrence.behaviour_vectors), or None; zero rows for items outside the release
    behaviour: np.ndarray | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({item: i + 1 for i, item in enumerate(self.item_ids)})
        if self.behaviour is not None and self.behaviour.shape[0] != len(self.item_ids):
            raise ValueError(f"{self.behaviour.shape[0]} behaviour vectors for {len(self.item_ids)} items")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_features(self) -> np.ndarray:
        """``float32 [n_items, d]``: THE item tower's input matrix, row ``i`` for ``item_ids[i]``: the
        frozen title embedding, with the DP behaviour vectors as further columns when there are some."""
        text = np.asarray(self.text, dtype=np.float32)
        if self.behaviour is None:
            return text
        return np.concatenate([text, np.asarray(self.behaviour, dtype=np.float32)], axis=1)

    def with_behaviour(self, behaviour: np.ndarray | None) -> ItemCatalog:
        """This catalog with ``behaviour`` vectors (rows in catalog order) beside the titles."""
        return replace(self, behaviour=None if behaviour is None else np.asarray(behaviour, np.float32))

    def behaviour_for(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """This catalog's behaviour vectors of ``item_ids`` (zero rows for items it does not know)."""
        if self.behaviour is None:
            return None
        padded = np.concatenate([np.zeros((1, self.behaviour.shape[1]), np.float32), self.behaviour])
        return padded[self.index_of(item_ids)]

    def index_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Model indices of item ids; unknown ids map to padding (0)."""
        return np.fromiter((self._index.get(i, PAD) for i in item_ids), dtype=np.int64, count=len(item_ids))


def price_edges_log(n_buckets: int, low: float = 0.5, high: float = 500.0) -> tuple[float, ...]:
    """Fixed log-spaced price bucket edges (public constants, not learned from data)."""
    return tuple(float(x) for x in np.geomspace(low, high, n_buckets - 1))


def build_item_catalog(
    items: pd.DataFrame, embeddings: pd.DataFrame, *, n_price_buckets: int = 8, encoder_id: str = "unknown"
) -> ItemCatalog:
    """Join catalog rows (item_id, category, price) with their text embeddings (item_id, embedding)."""
    merged = items[["item_id", "category", "price"]].merge(
        embeddings[["item_id", "embedding"]], on="item_id", how="inner", validate="one_to_one"
    )
    if merged.empty:
        raise ValueError("no catalog item has a text embedding")
    merged = merged.sort_values("item_id", kind="stable").reset_index(drop=True)
    category = merged["category"].fillna(UNKNOWN_CATEGORY).astype(str)
    categories = tuple(sorted(set(category)))
    cat_pos = {c: i for i, c in enumerate(categories)}
    edges = price_edges_log(n_price_buckets)
    price = merged["price"].fillna(0.0).to_numpy(dtype=np.float64)
    return ItemCatalog(
        item_ids=tuple(merged["item_id"].astype(str)),
        text=np.stack(merged["embedding"].map(lambda v: np.asarray(v, dtype=np.float32)).to_list()),
        category_index=category.map(cat_pos).to_numpy(dtype=np.int64),
        price_bucket=np.searchsorted(np.asarray(edges), price).astype(np.int64),
        categories=categories,
        price_edges=edges,
        encoder_id=encoder_id,
    )


def user_feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """Fixed transforms of the user features: ``log1p`` counts, recency scaled, a "never bought" flag.

    No mean or variance is estimated from the population, so the transform itself releases nothing.
    """
    counts = frame.reindex(columns=list(USER_COUNT_FEATURES)).fillna(0.0).to_numpy(dtype=np.float64)
    days = frame.get("days_since_last_purchase", pd.Series(-1, index=frame.index)).fillna(-1)
    days_arr = days.to_numpy(dtype=np.float64)
    never = (days_arr < 0).astype(np.float64)
    recency = np.where(days_arr < 0, 0.0, np.log1p(np.clip(days_arr, 0, None)) / 6.0)
    out = np.concatenate([np.log1p(np.clip(counts, 0, None)) / 4.0, recency[:, None], never[:, None]], axis=1)
    return out.astype(np.float32)


def history_matrix(histories: Sequence[Sequence[str]], catalog: ItemCatalog, length: int) -> np.ndarray:
    """Model indices of each user's recent items (most recent first), padded with 0 to ``length``."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, positions in enumerate(history_positions(histories, catalog, length)):
        out[row, : len(positions)] = positions + 1
    return out


def history_positions(
    recent_items: Sequence[Sequence[str] | None], catalog: ItemCatalog, length: int
) -> list[np.ndarray]:
    """0-based catalog positions of each user's ``length`` most recent items (unknown items dropped)."""
    out = []
    for items in recent_items:
        idx = catalog.index_of(list(items if items is not None else [])[:length])
        out.append(idx[idx != PAD] - 1)
    return out


def own_purchase_matrix(state: pd.DataFrame, catalog: ItemCatalog) -> np.ndarray:
    """``[U, N]`` counts of each user's own past purchases (the user's own data: no privacy cost)."""
    out = np.zeros((len(state), catalog.n_items), dtype=np.float32)
    for row, (items, counts) in enumerate(
        zip(state["purchased_items"], state["purchased_counts"], strict=True)
    ):
        idx = catalog.index_of(list(items))
        keep = idx != PAD
        np.add.at(out[row], idx[keep] - 1, np.asarray(counts, dtype=np.float32)[keep])
    return out


@dataclass(frozen=True)
class BlendWeights:
    """Scoring blend: ``model`` * z-scored model score + ``repeat`` * log1p(own purchases)
    + ``popularity`` * z-scored log1p(DP popularity) + ``content`` * z-scored content affinity
    (:func:`content_affinity`).

    The repeat and content signals are the user's own data with the public text encoder (no privacy
    cost); the popularity signal is a DP release charged to the ledger. Weights are tuned on a
    validation window, which may also turn the model's share down (to 0 when it adds nothing there).
    """

    repeat: float = 0.0
    popularity: float = 0.0
    content: float = 0.0
    model: float = 1.0


# Text neighbours kept per item: on Online Retail II 50 to 200 ranked as well as all items (ad hoc
# script on the validation window; numbers in the #5 issue note).
CONTENT_NEIGHBOURS: Final = 100


def _row_z(scores: np.ndarray) -> np.ndarray:
    mean = scores.mean(axis=1, keepdims=True)
    return (scores - mean) / (scores.std(axis=1, keepdims=True) + 1e-6)


def blend_scores(
    model_scores: np.ndarray,
    own_counts: np.ndarray | None,
    popularity: np.ndarray | None,
    weights: BlendWeights,
    content: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``[U, N]`` model scores with ``[U, N]`` own purchase counts, ``[N]`` DP popularity and
    ``[U, N]`` content affinity."""
    out = weights.model * _row_z(model_scores)
    if own_counts is not None and weights.repeat:
        out = out + weights.repeat * np.log1p(np.clip(own_counts, 0, None))
    if popularity is not None and weights.popularity:
        pop = np.log1p(np.clip(popularity, 0, None))
        pop = (pop - pop.mean()) / (pop.std() + 1e-6)
        out = out + weights.popularity * pop[None, :]
    if content is not None and weights.content:
        out = out + weights.content * _row_z(content)
    return out
