"""The Vowpal Wabbit cb_explore_adf reference on a simulated uniform log: a valid exploring policy,
worth more than the logging policy by the simulator's truth, and judged by the same DR estimator."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.campaigns import ope, reward, simulator
from tasks.campaigns.vw_reference import fit_vw_reference
from tasks.sources.synthetic import SyntheticConfig


@pytest.fixture(scope="module")
def population() -> simulator.Population:
    return simulator.build_population(np.random.default_rng(5), shop=SyntheticConfig(n_users=600))


def test_vw_policy_explores_beats_uniform_logging_and_dr_estimates_it(
    population: simulator.Population,
) -> None:
    rng = np.random.default_rng(6)
    logging = simulator.uniform(population)
    train = simulator.draw_decisions(population, logging, 8_000, rng)
    features = population.features()
    vw = fit_vw_reference(
        features[train.users], train.actions, train.rewards, train.propensities, population.n_actions, rng
    )
    probs = vw.probabilities(features)
    vw.close()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert probs.min() >= 0.1 / population.n_actions - 1e-6  # epsilon-greedy 0.1 over 5 actions
    truth = simulator.true_value(population, probs)
    assert truth > simulator.true_value(population, logging) + 0.5
    # the same estimator as the DP policy's, on a fresh log of the same logging policy
    held = simulator.draw_decisions(population, logging, 8_000, rng)
    q = reward.cross_fitted_rewards(
        lambda: reward.PerActionRidge(population.n_actions),
        features[held.users],
        held.actions,
        held.rewards,
        rng,
    )
    estimate = ope.doubly_robust(held.logged(), probs[held.users], q)
    assert abs(estimate.value - truth) < 4 * estimate.std_error


def test_vw_refuses_a_log_without_valid_propensities(population: simulator.Population) -> None:
    rng = np.random.default_rng(7)
    log = simulator.draw_decisions(population, simulator.uniform(population), 50, rng)
    propensities = log.propensities.copy()
    propensities[3] = 0.0
    with pytest.raises(ValueError, match=r"propensity must lie in \(0, 1\]"):
        fit_vw_reference(
            population.features()[log.users],
            log.actions,
            log.rewards,
            propensities,
            population.n_actions,
            rng,
        )
