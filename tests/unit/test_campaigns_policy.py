"""The offer policy: exact, exploring action probabilities; learned from a uniform log it beats the
logging policy in truth, and off-policy evaluation on a fresh log says so."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.campaigns import policy, simulator
from tasks.campaigns.study import estimate_all


def test_greedy_splits_ties_and_exploration_keeps_every_action() -> None:
    scores = np.array([[1.0, 3.0, 3.0], [5.0, 0.0, -1.0]])
    np.testing.assert_allclose(policy.greedy(scores), [[0, 0.5, 0.5], [1, 0, 0]])
    probs = policy.explore(policy.greedy(scores), 0.3)
    np.testing.assert_allclose(probs, [[0.1, 0.45, 0.45], [0.8, 0.1, 0.1]])


def test_softmax_by_hand() -> None:
    probs = policy.softmax(np.array([[0.0, np.log(3.0)]]), temperature=1.0)
    np.testing.assert_allclose(probs, [[0.25, 0.75]])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        policy.softmax(np.zeros((1, 2)), 0.0)


def test_learned_policy_beats_uniform_logging_in_truth_and_in_estimate() -> None:
    """Fitted on 20,000 uniformly logged decisions, the epsilon-greedy (0.1) policy is worth more than
    the logging policy and every trivial policy (true values); on a fresh uniform log of 5,000
    decisions the lower 95% bound of its DR estimate is above the logging policy's true value, and
    each estimate lies within 4 standard errors of its true value."""
    population = simulator.build_population(np.random.default_rng(1))
    features = population.features()
    rng = np.random.default_rng(21)
    logging = simulator.uniform(population)
    train = simulator.draw_decisions(population, logging, 20_000, rng)
    learned = policy.fit_offer_policy(
        features[train.users], train.actions, train.rewards, population.n_actions, epsilon=0.1
    )
    probs = learned.probabilities(features)

    assert probs.min() >= 0.1 / population.n_actions - 1e-12
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    value = simulator.true_value(population, probs)
    trivial = [simulator.nobody(population)] + [
        simulator.everybody(population, o) for o in population.actions[1:]
    ]
    assert value > simulator.true_value(population, logging) + 1.0
    assert all(value > simulator.true_value(population, p) for p in trivial)
    assert value < simulator.true_value(population, simulator.oracle(population))

    fresh = simulator.draw_decisions(population, logging, 5_000, rng)
    estimates = estimate_all(population, fresh, probs, rng)
    assert estimates["dr"].low > simulator.true_value(population, logging)
    for estimate in estimates.values():
        assert abs(estimate.value - value) < 4 * estimate.std_error
