"""User-level DP popularity with OpenDP's discrete Gaussian: contribution cap, noise, domain, cost."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest

from tasks.privacy.accounting import DiscreteGaussianCountMechanism
from tasks.privacy.popularity import (
    PopularityRelease,
    capped_pairs,
    popularity_mechanism,
    release_dp_popularity,
)


def _events() -> pd.DataFrame:
    heavy = [("heavy", f"i{k}", "UK") for k in range(10)] * 3  # one user, 10 distinct items, repeated
    light = [("u1", "i0", "UK"), ("u2", "i0", "FR"), ("u2", "i1", "FR"), ("u3", "i1", None)]
    return pd.DataFrame(heavy + light, columns=["user_id", "item_id", "country"])


def test_each_user_adds_one_to_at_most_cap_distinct_items() -> None:
    released = release_dp_popularity(_events(), sigma=1e-6, cap_per_user=3, by_country=False)
    # heavy contributes 3, u1 1, u2 2, u3 1 (a discrete Gaussian of scale 1e-6 is 0 but with
    # probability ~1e-(10^11))
    assert released["noisy_count"].sum() == 7
    assert released["noisy_count"].max() <= 3  # no item counts a user twice


def test_each_user_keeps_a_random_subset_of_their_own_keys() -> None:
    kept = [
        frozenset(capped_pairs(_events(), ["item_id"], 3).query("user_id == 'heavy'")["item_id"])
        for _ in range(30)
    ]
    assert all(len(k) == 3 and k <= {f"i{n}" for n in range(10)} for k in kept)
    assert len(set(kept)) > 1  # not always the same three: drawn, not the first ones in key order


def test_counts_are_non_negative_integers_and_fresh_noise_every_release() -> None:
    releases = [
        release_dp_popularity(_events(), sigma=5.0, cap_per_user=2, by_country=False)["noisy_count"]
        for _ in range(5)
    ]
    for counts in releases:
        assert (counts >= 0).all()
        assert (counts == counts.round()).all()  # discrete Gaussian: integers, no floating-point noise
    # 5 releases of 10 items at scale 5 are all equal with probability < 1e-30
    assert len({tuple(c) for c in releases}) > 1


def test_noise_has_the_stated_scale() -> None:
    events = pd.DataFrame({"user_id": [f"u{k}" for k in range(500)], "item_id": "i0"})
    items = [f"i{k}" for k in range(400)]
    released = release_dp_popularity(
        events, sigma=3.0, cap_per_user=1, by_country=False, item_ids=items
    ).set_index("item_id")["noisy_count"]
    # i0 = 500 + noise; the 399 zero items are clipped at 0: about half of them stay 0
    assert abs(released["i0"] - 500) < 20  # 6.7 standard deviations
    zeros = released.drop("i0")
    assert 0.4 < (zeros == 0).mean() < 0.7  # P(Z <= 0) for a discrete Gaussian of scale 3 is ~0.57
    assert 1.0 < zeros[zeros > 0].mean() < 5.0


def test_release_covers_the_public_domain_given() -> None:
    released = release_dp_popularity(
        _events(),
        sigma=1e-6,
        cap_per_user=5,
        by_country=True,
        item_ids=["i0", "i1", "never_bought"],
        countries=["UK", "FR", "unknown"],
    )
    assert len(released) == 9
    counts = released.set_index(["country", "item_id"])["noisy_count"]
    assert counts["FR", "i0"] == 1
    assert counts["unknown", "i1"] == 1
    assert counts["UK", "never_bought"] == 0
    assert list(released.columns) == ["country", "item_id", "noisy_count"]


def test_popularity_mechanism_is_a_discrete_gaussian_with_sqrt_cap_l2_sensitivity() -> None:
    mechanism = popularity_mechanism(sigma=8.0, cap_per_user=16)
    assert isinstance(mechanism, DiscreteGaussianCountMechanism)
    assert mechanism.l2_sensitivity == math.sqrt(16)
    assert (mechanism.scale, mechanism.releases) == (8.0, 1)
    assert mechanism.rho == pytest.approx(16 / (2 * 64))


@pytest.mark.parametrize(("sigma", "cap"), [(4.0 * math.sqrt(50), 50), (4.0 * math.sqrt(20), 20), (0.7, 3)])
def test_charged_rho_is_opendps_own_privacy_map(sigma: float, cap: int) -> None:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T=float)
    opendp_rho = dp.m.make_gaussian(*space, scale=sigma).map(math.sqrt(cap))
    assert popularity_mechanism(sigma, cap).rho == pytest.approx(opendp_rho, rel=1e-12)
    assert opendp_rho > 0


def test_a_popularity_release_counts_its_event_types_in_its_window_and_charges_its_mechanism() -> None:
    """One DP count release helper: the policy decides the window, the cap, the noise and the charge."""
    end = pd.Timestamp("2024-03-15", tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d", "e"],
            "item_id": ["i0", "i0", "i0", "i1", "i1"],
            "event_type": ["purchase", "view", "purchase", "purchase", "purchase"],
            "event_timestamp": pd.to_datetime(
                ["2024-03-14", "2024-03-14", "2024-03-01", "2024-03-10", "2024-03-15"], utc=True
            ),
            "country": ["UK"] * 5,
        }
    )
    policy = PopularityRelease(noise_multiplier=4.0, cap_per_user=20, days=7, event_types=("purchase",))
    assert list(policy.window(events, end)["user_id"]) == ["a", "d"]  # c too old, e at end, b a view
    released = replace(policy, noise_multiplier=1e-7).release(events, end, item_ids=["i0", "i1", "i2"])
    assert dict(zip(released["item_id"], released["noisy_count"], strict=True)) == {"i0": 1, "i1": 1, "i2": 0}
    charged = policy.mechanism(releases=3)
    assert charged == DiscreteGaussianCountMechanism(
        scale=policy.sigma, l2_sensitivity=math.sqrt(20), releases=3
    )
    assert charged.rho == pytest.approx(3 / (2 * 4.0**2))
