"""Reward models: the per-action ridge and out-of-fold predictions."""

from __future__ import annotations

import numpy as np

from tasks.campaigns import reward


def test_per_action_ridge_recovers_linear_rewards() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    actions = rng.integers(0, 2, 600)
    truth = np.column_stack([1.0 + x @ [1.0, 0.0, -2.0], -1.0 + x @ [0.0, 3.0, 0.5]])
    rewards = truth[np.arange(600), actions]
    model = reward.PerActionRidge(n_actions=3, alpha=0.0).fit(x, actions, rewards)
    predicted = model.predict(x)
    np.testing.assert_allclose(predicted[:, :2], truth, atol=1e-8)
    np.testing.assert_allclose(predicted[:, 2], rewards.mean())  # never logged: the log's mean


def test_cross_fitted_predictions_never_see_their_own_decision() -> None:
    """Four folds of one decision each, no informative feature: each decision is predicted by the mean
    reward of the three others, never by its own."""
    features = np.zeros((4, 1))
    actions = np.zeros(4, dtype=np.int64)
    rewards = np.array([1.0, 2.0, 3.0, 10.0])
    q = reward.cross_fitted_rewards(
        lambda: reward.PerActionRidge(n_actions=1),
        features,
        actions,
        rewards,
        np.random.default_rng(0),
        n_folds=4,
    )
    np.testing.assert_allclose(q[:, 0], (rewards.sum() - rewards) / 3)
