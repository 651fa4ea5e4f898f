"""User-level DP popularity: contribution cap, noise, domain."""

from __future__ import annotations

import math

import pandas as pd

from tasks.privacy.popularity import popularity_mechanism, release_dp_popularity


def _events() -> pd.DataFrame:
    heavy = [("heavy", f"i{k}", "UK") for k in range(10)] * 3  # one user, 10 distinct items, repeated
    light = [("u1", "i0", "UK"), ("u2", "i0", "FR"), ("u2", "i1", "FR"), ("u3", "i1", None)]
    return pd.DataFrame(heavy + light, columns=["user_id", "item_id", "country"])


def test_each_user_adds_one_to_at_most_cap_distinct_items() -> None:
    released = release_dp_popularity(_events(), sigma=1e-6, cap_per_user=3, rng_seed=0, by_country=False)
    # heavy contributes 3, u1 1, u2 2, u3 1
    assert round(released["noisy_count"].sum()) == 7
    assert released["noisy_count"].max() < 3.5  # no item counts a user twice


def test_counts_are_non_negative_and_reproducible_for_a_seed() -> None:
    first = release_dp_popularity(_events(), sigma=5.0, cap_per_user=2, rng_seed=11, by_country=False)
    again = release_dp_popularity(_events(), sigma=5.0, cap_per_user=2, rng_seed=11, by_country=False)
    assert (first["noisy_count"] >= 0).all()
    pd.testing.assert_frame_equal(first, again)


def test_release_covers_the_public_domain_given() -> None:
    released = release_dp_popularity(
        _events(),
        sigma=1e-6,
        cap_per_user=5,
        rng_seed=0,
        by_country=True,
        item_ids=["i0", "i1", "never_bought"],
        countries=["UK", "FR", "unknown"],
    )
    assert len(released) == 9
    counts = released.set_index(["country", "item_id"])["noisy_count"].round()
    assert counts["FR", "i0"] == 1
    assert counts["unknown", "i1"] == 1
    assert counts["UK", "never_bought"] == 0


def test_popularity_mechanism_has_sqrt_cap_l2_sensitivity() -> None:
    mechanism = popularity_mechanism(sigma=8.0, cap_per_user=16)
    assert mechanism.l2_sensitivity == math.sqrt(16)
    assert (mechanism.sigma, mechanism.releases) == (8.0, 1)
