"""Issue 16: the champion scores a challenger's (grown) catalog: "scores have shape (20, 45), expected
(20, 48)" in register_and_gate during a backfill on the native stack (tests/production/test_backfill_chain.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tasks.catalog import BlendWeights, build_item_catalog
from tasks.model import Recommender, build_model


def _catalog(n: int, seed: int = 0) -> object:
    items = pd.DataFrame(
        {"item_id": [f"i{j:02d}" for j in range(n)], "category": (["a", "b", "c"] * n)[:n], "price": 2.0}
    )
    rng = np.random.default_rng(seed)
    emb = pd.DataFrame({"item_id": items["item_id"], "embedding": list(rng.normal(size=(n, 6)))})
    return build_item_catalog(items, emb)


def test_the_champion_scores_a_grown_catalog_and_keeps_the_scores_of_the_items_it_knows() -> None:
    torch.manual_seed(0)
    old = _catalog(12)
    champion = Recommender(
        build_model(old, dim=8, hidden=16),
        old,
        weights=BlendWeights(repeat=8.0, popularity=0.5),
        popularity=None,
        history_length=5,
    )
    grown = _catalog(15)  # the same first 12 items (same seed), three new ones
    users = pd.DataFrame(
        {
            "purchases_30d": [2.0, 0.0],
            "days_since_last_purchase": [4.0, -1.0],
            "recent_items": [["i03", "i05"], ["i01"]],
            "purchased_items": [["i03"], []],
            "purchased_counts": [[2], []],
        }
    )
    moved = champion.on_catalog(grown)
    before, after = champion.model_scores(users), moved.model_scores(users)
    assert before.shape == (2, 12)
    assert after.shape == (2, 15)
    positions = [grown.item_ids.index(i) for i in old.item_ids]
    np.testing.assert_allclose(after[:, positions], before, rtol=1e-5, atol=1e-6)
    assert np.isfinite(after).all()
    assert moved.scores(users).shape == (2, 15)


def test_a_champion_with_behaviour_vectors_gives_new_items_zero_behaviour_columns() -> None:
    """Issue 17 item 2: the item tower's input is title + DP behaviour columns; a new item has none."""
    torch.manual_seed(0)
    old = _catalog(12)
    old = old.with_behaviour(np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32))
    champion = Recommender(
        build_model(old, dim=8, hidden=16),
        old,
        weights=BlendWeights(repeat=8.0, popularity=0.5),
        popularity=None,
        history_length=5,
    )
    grown = _catalog(15)
    moved = champion.on_catalog(grown)
    new = [grown.item_ids.index(i) for i in grown.item_ids if i not in old.item_ids]
    rows = moved.model.item_text[1:][new].detach().numpy()
    np.testing.assert_array_equal(rows[:, 6:], 0.0)  # 6 title dimensions, then the behaviour columns
    np.testing.assert_allclose(rows[:, :6], grown.text[new], rtol=1e-6)
    users = pd.DataFrame(
        {
            "purchases_30d": [2.0],
            "days_since_last_purchase": [4.0],
            "recent_items": [["i03", "i13"]],
            "purchased_items": [["i03"]],
            "purchased_counts": [[2]],
        }
    )
    assert np.isfinite(moved.model_scores(users)).all()
