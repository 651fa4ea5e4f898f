"""The training run's DP co-occurrence step: its domain, its settings and the catalog's vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_settings import tiny_catalog

from tasks.config import Settings
from tasks.privacy.cooccurrence import pair_index
from tasks.training import (
    behaviour_for_catalog,
    cooccurrence_domain,
    cooccurrence_release,
    dp_cooccurrence,
)


def test_the_domain_is_the_whole_catalog_or_its_most_popular_items_by_the_dp_release() -> None:
    popularity = np.array([5.0, 0.0, 9.0, 9.0, 1.0, 7.0])
    assert cooccurrence_domain(popularity, 10).tolist() == [0, 1, 2, 3, 4, 5]
    assert cooccurrence_domain(popularity, 3).tolist() == [2, 3, 5]  # in catalog order
    assert cooccurrence_domain(popularity, 2).tolist() == [2, 3]  # ties: the earlier position


def test_settings_switch_the_release_on_with_its_own_cost() -> None:
    assert dp_cooccurrence(Settings(cooc_enabled=False)) is None
    policy = dp_cooccurrence(Settings(cooc_enabled=True, cooc_noise_multiplier=2.0, cooc_cap_per_user=5))
    assert policy is not None
    assert policy.cap_per_user == 5
    assert policy.mechanism().rho == pytest.approx(1 / (2 * 2.0**2))
    assert policy.mechanism().l2_sensitivity == pytest.approx(np.sqrt(15))


def test_items_outside_the_domain_get_zero_vectors() -> None:
    catalog = tiny_catalog(8)
    domain = np.array([1, 2, 3, 5, 6], dtype=np.int64)
    ids = [catalog.item_ids[p] for p in domain]
    # users buy pairs {1, 2} and {5, 6}, as positions; 3 alone
    rows = [(f"u{k}", ids[0]) for k in range(20)] + [(f"u{k}", ids[1]) for k in range(20)]
    rows += [(f"v{k}", ids[3]) for k in range(20)] + [(f"v{k}", ids[4]) for k in range(20)]
    rows += [("w", ids[2])]
    events = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(
        event_type="purchase", event_timestamp=pd.Timestamp("2026-01-01", tz="UTC")
    )
    policy = dp_cooccurrence(Settings(cooc_enabled=True, cooc_noise_multiplier=0.01, cooc_cap_per_user=2))
    assert policy is not None
    released = cooccurrence_release(events, catalog, pd.Timestamp("2026-01-02", tz="UTC"), policy, domain)
    assert released[0].tolist() == domain.tolist()
    assert released[1].shape == (len(pair_index(5)[0]),)
    vectors = behaviour_for_catalog(catalog, released, dim=2)
    assert vectors.shape == (8, 2)
    assert not vectors[[0, 4, 7]].any()
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    assert unit[1] @ unit[2] > 0.9  # bought together
    assert abs(unit[1] @ unit[5]) < 0.1  # never together
