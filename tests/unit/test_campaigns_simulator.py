"""The campaign simulator's ground truth: hand-checkable values of the trivial policies, coherent
response types, and logs whose outcomes and propensities agree with the truth."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from tasks.campaigns import simulator
from tasks.campaigns.simulator import Offer, Population, Response
from tasks.sources.synthetic import SyntheticConfig, shop_customers

S, P, D, L = Response.SURE, Response.PERSUADABLE, Response.SLEEPING_DOG, Response.LOST
OFFERS = (Offer("pct10", "percent_off", None, 10.0, 0.0), Offer("ship", "free_shipping", None, 0.0, 3.5))


def tiny(response: list[list[Response]]) -> Population:
    """Four customers: baskets 100, 100, 40, 40; margin 35%; the offers pct10 and ship (cost 3.5)."""
    n = len(response)
    return Population(
        user_id=np.array([f"C{i:06d}" for i in range(n)], dtype=object),
        country=np.array(["United Kingdom"] * n, dtype=object),
        activity=np.ones(n),
        recency_days=np.full(n, 10.0),
        affinity=np.full((n, 10), 0.1),
        basket_mean=np.array([100.0, 100.0, 40.0, 40.0])[:n],
        response=np.array(response, dtype=np.int8),
        offers=OFFERS,
    )


@pytest.fixture
def four() -> Population:
    return tiny([[S, S, D], [L, P, L], [S, D, S], [L, L, P]])


def test_true_values_of_trivial_policies_by_hand(four: Population) -> None:
    # no offer: 35 (0.35 * 100) + 0 + 14 (0.35 * 40) + 0 = 49 over 4 customers
    assert simulator.true_value(four, simulator.nobody(four)) == pytest.approx(12.25)
    # pct10 to everybody: 35 - 10 = 25 for the sure buyer, 25 for the persuadable one, 0 for the others
    assert simulator.true_value(four, simulator.everybody(four, "pct10")) == pytest.approx(12.5)
    assert simulator.true_incremental_value(four, simulator.everybody(four, "pct10")) == pytest.approx(0.25)
    # ship to everybody: 0 (put off), 0, 14 - 3.5, 14 - 3.5
    assert simulator.true_incremental_value(four, simulator.everybody(four, "ship")) == pytest.approx(-7.0)
    # uniform: (35 + 25 + 0) / 3 + 25 / 3 + (14 + 0 + 10.5) / 3 + 10.5 / 3 = 40 over 4 customers
    assert simulator.true_value(four, simulator.uniform(four)) == pytest.approx(10.0)
    # oracle: 35 (no offer) + 25 (pct10) + 14 (no offer) + 10.5 (ship)
    assert simulator.true_value(four, simulator.oracle(four)) == pytest.approx(84.5 / 4)
    np.testing.assert_array_equal(simulator.oracle(four).argmax(axis=1), [0, 1, 0, 2])


def test_incoherent_response_types_are_refused() -> None:
    with pytest.raises(ValueError, match="agree with the no-offer column"):
        tiny([[L, S, L]])  # does not buy without an offer, yet "buys anyway" with one
    with pytest.raises(ValueError, match=r"SURE \(buys\) or LOST"):
        tiny([[P, P, P]])


def test_a_policy_must_be_probabilities(four: Population) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        simulator.true_value(four, np.full((4, 3), 0.5))


def test_population_is_the_synthetic_shops_customers() -> None:
    shop = SyntheticConfig(n_users=300)
    population = simulator.build_population(np.random.default_rng(0), shop=shop)
    customers = shop_customers(shop)
    np.testing.assert_array_equal(population.user_id, customers.user_id)
    np.testing.assert_array_equal(population.country, customers.country)
    assert population.actions == ("no_offer", "pct10", "amt5", "free_ship", "promo_home")
    counts = np.bincount(population.response[:, 1:].ravel(), minlength=4)
    assert (counts > 0).all(), "every response type occurs"
    assert population.features().shape == (300, len(simulator.FEATURE_NAMES))


def test_logged_outcomes_agree_with_the_truth() -> None:
    population = simulator.build_population(np.random.default_rng(5), shop=SyntheticConfig(n_users=400))
    logging = simulator.business_rule(population)
    rng = np.random.default_rng(6)
    d = simulator.draw_decisions(population, logging, 200_000, rng)
    np.testing.assert_array_equal(d.propensities, logging[d.users, d.actions])
    np.testing.assert_array_equal(d.purchased, population.buys[d.users, d.actions])
    assert (d.redemption_cost[(d.actions == 0) | ~d.purchased] == 0).all()
    assert not d.clicked[d.actions == 0].any()
    # the log's mean reward estimates the logging policy's true value: within 4 standard errors
    truth = simulator.true_value(population, logging)
    error = d.rewards.std(ddof=1) / np.sqrt(len(d.rewards))
    assert abs(d.rewards.mean() - truth) < 4 * error
    # actions are drawn with the logged probabilities: targeted customers mostly get an offer
    targeted = logging[d.users, 0] < 0.5
    assert (d.actions[targeted] > 0).mean() == pytest.approx(0.9 + 0.1 * 4 / 5, abs=0.01)
    assert (d.actions[~targeted] == 0).mean() == pytest.approx(0.9 + 0.1 / 5, abs=0.01)


def test_deterministic_business_rule_has_zero_propensities() -> None:
    population = simulator.build_population(np.random.default_rng(5), shop=SyntheticConfig(n_users=400))
    rule = simulator.business_rule(population, explore=0.0)
    assert set(np.unique(rule)) == {0.0, 0.25, 1.0}


def test_exposures_need_a_tz_aware_start(four: Population) -> None:
    rng = np.random.default_rng(0)
    d = simulator.draw_decisions(four, simulator.uniform(four), 3, rng)
    with pytest.raises(ValueError, match="tz-aware"):
        simulator.exposures_frame(
            four, d, policy_name="u", policy_version="1", start=dt.datetime(2026, 1, 1), rng=rng
        )
