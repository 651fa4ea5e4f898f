"""The vectorised scoring kernel (:func:`tasks.publishing.score_top_k`, issue 19) gives the top-K the
NumPy path it replaced gave (tests/helpers_scoring_reference.py: :func:`tasks.catalog.blend_scores` and
:func:`tasks.model.content_affinity` on dense matrices, then ``torch.topk`` under the rules): the same
items in the same order and the same scores to 1e-6 (relative: the reference adds its terms in
float32, a few units in the last place of scores up to about 6; the kernel in float64), on a seeded random catalog with tied items
(duplicated item and title vectors, equal popularity), the per-category cap binding, items out of the
catalog, users without purchases or recent items, and every blend term on and off.

Equal scores (within the float32 reference's precision): the kernel ranks them by catalog position,
``torch.topk`` in an order of its own, and a tied pair of items can differ in the reference's last bit
where the matrix product reaches their columns in different blocks; items tied in the reference's
list are compared as a set, and a tie run at the end of the list by its scores only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tasks.catalog import BlendWeights
from tasks.model import text_neighbours
from tasks.publishing import PublishRules, ScoreBlend, TopK, popularity_top_k, score_top_k
from tests.helpers_scoring_reference import (
    reference_blend,
    reference_dense_counts,
    reference_score_top_k,
    reference_top_k_with_rules,
)

N_ITEMS, N_USERS, DIM, N_CATEGORIES = 700, 230, 16, 9


def shop(seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    items[1::50] = items[0::50][: len(items[1::50])]  # tied pairs of items (same model score)
    text = rng.normal(size=(N_ITEMS, 24)).astype(np.float32)
    text[1::50] = text[0::50][: len(text[1::50])]  # ... with the same title vectors
    popularity = rng.gamma(1.0, 20.0, N_ITEMS).round()  # rounded: many equal counts
    popularity[1::50] = popularity[0::50][: len(popularity[1::50])]
    category = rng.integers(0, N_CATEGORIES, N_ITEMS)
    category[: N_ITEMS // 2] = 0  # a dominant category, so the cap binds
    category[1::50] = category[0::50][: len(category[1::50])]
    users = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    users[:40] += 2.0 * items[0]  # users who like the tied items
    purchases, recents = [], []
    for u in range(N_USERS):
        n_bought = 0 if u % 7 == 0 else int(rng.integers(1, 8))
        bought = rng.choice(N_ITEMS, n_bought, replace=False)
        counts = rng.integers(1, 5, n_bought).astype(float)
        purchases.append((bought.astype(np.int64), counts))
        recents.append(np.zeros(0, np.int64) if u % 5 == 0 else rng.choice(N_ITEMS, int(rng.integers(1, 21))))
    allowed = rng.random(N_ITEMS) > 0.05
    return {
        "users": torch.from_numpy(users),
        "items": torch.from_numpy(items),
        "purchases": purchases,
        "recents": recents,
        "popularity": popularity,
        "category": category,
        "allowed": allowed,
        "neighbours": text_neighbours(text, m=60),
    }


def assert_same_top_k(
    new: TopK, ref: TopK, full: np.ndarray, category: np.ndarray | None, cap: int | None
) -> None:
    """``new`` is ``ref`` up to the order of equal scores: at every position the same score (to 1e-6
    relative) and an item whose reference score (``full [U, N]``, the reference's blended matrix) is
    that score; no item twice; the cap kept; and the same item wherever no other item ties."""
    assert new.indices.shape == ref.indices.shape
    assert np.array_equal(new.indices < 0, ref.indices < 0)
    assert np.array_equal(np.isfinite(new.scores), np.isfinite(ref.scores))
    valid = ref.indices >= 0
    np.testing.assert_allclose(new.scores[valid], ref.scores[valid], rtol=1e-6, atol=1e-6)
    picked = np.take_along_axis(full, np.where(valid, new.indices, 0), axis=1)
    np.testing.assert_allclose(picked[valid], ref.scores[valid], rtol=1e-6, atol=1e-6)
    for row in range(len(new.indices)):
        mine = new.indices[row][new.indices[row] >= 0]
        assert len(set(mine.tolist())) == len(mine)
        if category is not None and cap is not None and len(mine):
            assert np.bincount(category[mine]).max() <= cap
    tied = np.isclose(full[:, None, :], ref.scores[:, :, None], rtol=1e-6, atol=1e-6).sum(axis=2) > 1
    assert np.array_equal(new.indices[valid & ~tied], ref.indices[valid & ~tied])


def reference_scores(s: dict[str, object], weights: BlendWeights | None, rules: PublishRules) -> np.ndarray:
    """The reference's blended ``[U, N]`` matrix with its masks (-inf), all users at once."""
    raw = (s["users"] @ s["items"].T).numpy()
    counts = reference_dense_counts(s["purchases"], N_ITEMS)
    out = raw.astype(np.float64)
    if weights is not None:
        neighbours = s["neighbours"] if weights.content else None
        blend = reference_blend(weights, s["popularity"], s["recents"], neighbours)
        out = np.asarray(blend(raw, counts, slice(0, N_USERS)), dtype=np.float32).astype(np.float64)
    if "allowed" in s:
        out[:, ~s["allowed"]] = -np.inf
    if not rules.include_purchased:
        out[counts > 0] = -np.inf
    return out


BLENDS = {
    "full": BlendWeights(repeat=1.0, popularity=0.5, content=0.7, model=1.0),
    "no content": BlendWeights(repeat=0.8, popularity=0.3),
    "content only with model": BlendWeights(content=1.3),
    "model off": BlendWeights(repeat=1.0, popularity=0.5, content=0.5, model=0.0),
    "negative repeat": BlendWeights(repeat=-0.4, popularity=0.2, content=0.2, model=0.6),
    # a negative content weight: the product is not accumulated onto the affinity (no positive gain)
    "negative content": BlendWeights(repeat=0.5, popularity=0.2, content=-0.3, model=1.0),
}


@pytest.mark.parametrize("name", sorted(BLENDS))
@pytest.mark.parametrize(
    "rules",
    [
        PublishRules(k=50, max_per_category=10, batch_size=64),
        PublishRules(k=20, max_per_category=2, batch_size=512),
        PublishRules(k=50, max_per_category=None, include_purchased=False, batch_size=100),
    ],
    ids=["publish-defaults", "tight-cap", "no-cap-purchases-excluded"],
)
def test_kernel_gives_the_reference_top_k(name: str, rules: PublishRules) -> None:
    s = shop(seed=len(name))
    weights = BLENDS[name]
    common = {"rules": rules, "purchases": s["purchases"], "allowed": s["allowed"], "category": s["category"]}
    ref = reference_score_top_k(
        s["users"],
        s["items"],
        **common,
        blend=reference_blend(
            weights, s["popularity"], s["recents"], s["neighbours"] if weights.content else None
        ),
    )
    new = score_top_k(
        s["users"],
        s["items"],
        **common,
        blend=ScoreBlend(
            weights, s["popularity"], s["recents"], s["neighbours"] if weights.content else None
        ),
    )
    full = reference_scores(s, weights, rules)
    assert_same_top_k(new, ref, full, s["category"], rules.max_per_category)
    assert (new.indices >= 0).mean() > 0.85  # lists mostly full (the tight cap leaves 2 of 20 empty)


def test_kernel_without_blend_gives_the_reference_top_k_of_the_bare_model_score() -> None:
    s = shop(seed=3)
    rules = PublishRules(k=30, max_per_category=4, batch_size=50)
    common = {"rules": rules, "purchases": s["purchases"], "category": s["category"]}
    ref = reference_score_top_k(s["users"], s["items"], **common)
    new = score_top_k(s["users"], s["items"], **common)
    full = reference_scores({k: v for k, v in s.items() if k != "allowed"}, None, rules)
    assert_same_top_k(new, ref, full, s["category"], rules.max_per_category)


def test_the_cap_binds_and_the_tied_items_are_recommended_in_this_shop() -> None:
    """The shop exercises what the comparison claims: capped lists and tied items inside them."""
    s = shop(seed=4)
    rules = PublishRules(k=50, max_per_category=10)
    top = score_top_k(
        s["users"],
        s["items"],
        rules=rules,
        purchases=s["purchases"],
        category=s["category"],
        blend=ScoreBlend(BLENDS["full"], s["popularity"], s["recents"], s["neighbours"]),
    )
    dominant = (s["category"][top.indices] == 0).sum(axis=1)
    assert dominant.max() == 10
    tied = np.isin(top.indices[:40], [0, 1]).sum(axis=1)
    assert (tied == 2).sum() > 10


def test_popularity_lists_match_the_reference_rules() -> None:
    s = shop(seed=5)
    popularity = np.asarray(s["popularity"], dtype=np.float32)
    for rules in (
        PublishRules(k=50),
        PublishRules(k=10, max_per_category=1),
        PublishRules(max_per_category=None),
    ):
        values, indices = reference_top_k_with_rules(
            torch.from_numpy(popularity)[None, :],
            k=rules.k,
            allowed=torch.from_numpy(s["allowed"]),
            category=torch.from_numpy(s["category"]),
            max_per_category=rules.max_per_category,
        )
        new = popularity_top_k(popularity, rules=rules, allowed=s["allowed"], category=s["category"])
        full = np.where(s["allowed"], popularity, -np.inf)[None, :].astype(np.float64)
        ref = TopK(indices=indices.numpy(), scores=values.numpy())
        assert_same_top_k(new, ref, full, s["category"], rules.max_per_category)


def test_chunking_does_not_change_the_result() -> None:
    s = shop(seed=6)
    blend = ScoreBlend(BLENDS["full"], s["popularity"], s["recents"], s["neighbours"])
    runs = [
        score_top_k(
            s["users"],
            s["items"],
            rules=dataclasses.replace(PublishRules(), batch_size=size),
            purchases=s["purchases"],
            category=s["category"],
            blend=blend,
        )
        for size in (8, 77, 512)
    ]
    for other in runs[1:]:
        assert np.array_equal(other.indices, runs[0].indices)
        np.testing.assert_allclose(other.scores, runs[0].scores, rtol=0, atol=1e-6)


def test_two_threads_give_the_one_thread_result() -> None:
    """Chunks scored on two threads at once write the same lists and scores as one thread."""
    s = shop(seed=7)
    common = {
        "rules": PublishRules(k=50, max_per_category=10, batch_size=16),
        "purchases": s["purchases"],
        "allowed": s["allowed"],
        "category": s["category"],
        "blend": ScoreBlend(BLENDS["full"], s["popularity"], s["recents"], s["neighbours"]),
    }
    one = score_top_k(s["users"], s["items"], **common, threads=1)
    two = score_top_k(s["users"], s["items"], **common, threads=2)
    assert np.array_equal(one.indices, two.indices)
    assert np.array_equal(one.scores, two.scores)
    with pytest.raises(ValueError, match="threads"):
        score_top_k(s["users"], s["items"], **common, threads=0)
