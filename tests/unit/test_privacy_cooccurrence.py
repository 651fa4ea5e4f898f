"""DP co-occurrence counts and the item vectors made from them: counts, cap, policy window, vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.privacy.cooccurrence import (
    CooccurrenceCounts,
    CooccurrenceRelease,
    behaviour_vectors,
    exact_cooccurrence,
    pair_index,
    release_dp_cooccurrence,
)

ITEMS = ["a", "b", "c", "d"]


def test_pair_counts_are_distinct_users_per_pair_with_items_on_the_diagonal() -> None:
    events = pd.DataFrame(
        {"user_id": ["u1", "u1", "u1", "u2", "u2", "u3"], "item_id": ["a", "b", "a", "a", "b", "c"]}
    )
    release = release_dp_cooccurrence(events, noise_multiplier=1e-9, cap_per_user=5, item_ids=ITEMS)
    expected = np.array(
        [[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=np.float64
    )  # a and b: two users; c: one; d: none
    assert np.array_equal(release.matrix(), expected)
    rows, cols = pair_index(4)
    assert np.all(rows <= cols)
    assert len(rows) == 10


def test_each_user_keeps_at_most_cap_items_a_random_subset() -> None:
    events = pd.DataFrame({"user_id": "heavy", "item_id": [f"i{k}" for k in range(10)]})
    items = [f"i{k}" for k in range(10)]
    kept = []
    for _ in range(20):
        matrix = CooccurrenceCounts(tuple(items), exact_cooccurrence(events, items, 3)).matrix()
        assert np.trace(matrix) == 3  # three items
        assert matrix.sum() - np.trace(matrix) == 6  # three pairs, both triangles
        kept.append(frozenset(np.flatnonzero(np.diag(matrix))))
    assert len(set(kept)) > 1


def test_the_policy_releases_the_window_before_its_end_only() -> None:
    stamps = pd.to_datetime(["2026-01-01", "2026-01-20", "2026-01-25", "2026-02-01"], utc=True)
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1"],
            "item_id": ["a", "b", "c", "d"],
            "event_type": ["purchase", "purchase", "view", "purchase"],
            "event_timestamp": stamps,
        }
    )
    policy = CooccurrenceRelease(noise_multiplier=1e-9, cap_per_user=5, days=14, event_types=("purchase",))
    released = policy.release(events, pd.Timestamp("2026-02-01", tz="UTC"), item_ids=ITEMS).matrix()
    assert np.diag(released).tolist() == [0.0, 1.0, 0.0, 0.0]  # a: too old, c: a view, d: at the end


def _block_release(noise: float = 0.0, seed: int = 0) -> CooccurrenceCounts:
    """Two groups of ten items bought together, with Gaussian jitter standing in for DP noise."""
    n = 20
    group = np.arange(n) // 10
    counts = np.where(group[:, None] == group[None, :], 30.0, 1.0)
    counts += np.random.default_rng(seed).normal(0.0, noise, size=(n, n)) if noise else 0.0
    rows, cols = pair_index(n)
    return CooccurrenceCounts(tuple(f"i{k}" for k in range(n)), np.rint(counts[rows, cols]).astype(np.int64))


def _cosine(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


@pytest.mark.parametrize("noise", [0.0, 5.0])
def test_items_bought_together_get_close_vectors(noise: float) -> None:
    vectors = behaviour_vectors(_block_release(noise), dim=4)
    assert vectors.shape == (20, 4)
    assert vectors.dtype == np.float32
    cosine = _cosine(vectors.astype(np.float64))
    same = np.arange(20)[:, None] // 10 == np.arange(20)[None, :] // 10
    off_diagonal = ~np.eye(20, dtype=bool)
    assert cosine[same & off_diagonal].mean() > 0.8
    assert cosine[~same].mean() < 0.3
    assert np.linalg.norm(vectors, axis=1).mean() == pytest.approx(1.0, rel=1e-5)


def test_vectors_are_a_function_of_the_release_alone() -> None:
    release = _block_release(5.0)
    assert np.array_equal(behaviour_vectors(release, 3), behaviour_vectors(release, 3))
    wide = behaviour_vectors(release, 32)  # more dimensions than items: zero columns
    assert wide.shape == (20, 32)
    assert not wide[:, 20:].any()


def test_a_release_with_no_positive_pair_gives_zero_vectors() -> None:
    rows, _ = pair_index(5)
    empty = CooccurrenceCounts(tuple("abcde"), -np.ones(len(rows), dtype=np.int64))
    assert not behaviour_vectors(empty, 3).any()
    with pytest.raises(ValueError, match="dim must be >= 1"):
        behaviour_vectors(empty, 0)
