"""Reward models: the expected profit of every action given a customer's features.

Doubly robust estimation (:func:`tasks.campaigns.ope.doubly_robust`) takes their predictions, fitted
out of fold (:func:`cross_fitted_rewards`); the offer policy (:mod:`tasks.campaigns.policy`) scores
actions with them.  These are non-private and stay inside the trust boundary; the policy's
user-level DP-SGD model is :mod:`tasks.campaigns.dp_reward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class RewardModel(Protocol):
    """Expected reward of every action given a customer's features, learned from logged decisions."""

    def fit(self, features: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> RewardModel: ...

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(len(features), n_actions)`` expected rewards."""
        ...


class PerActionRidge:
    """One ridge regression per action on standardised features (intercept not penalised).

    An action with fewer than two logged decisions predicts the mean reward of the whole log.
    """

    def __init__(self, n_actions: int, alpha: float = 1.0) -> None:
        if n_actions < 1 or alpha < 0:
            raise ValueError("n_actions must be >= 1 and alpha >= 0")
        self.n_actions = n_actions
        self.alpha = alpha
        self.coef_: np.ndarray | None = None  # (n_actions, n_features + 1), intercept last
        self._mean = np.zeros(0)
        self._scale = np.ones(0)

    def _design(self, features: np.ndarray) -> np.ndarray:
        standard = (features - self._mean) / self._scale
        return np.column_stack([standard, np.ones(len(features))])

    def fit(self, features: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> PerActionRidge:
        self._mean = features.mean(axis=0)
        scale = features.std(axis=0)
        self._scale = np.where(scale > 0, scale, 1.0)
        design = self._design(features)
        penalty = self.alpha * np.eye(design.shape[1])
        penalty[-1, -1] = 0.0
        coef = np.zeros((self.n_actions, design.shape[1]))
        coef[:, -1] = rewards.mean()
        for a in range(self.n_actions):
            rows = actions == a
            if rows.sum() >= 2:
                x, y = design[rows], rewards[rows]
                coef[a] = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        self.coef_ = coef
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("PerActionRidge.predict before fit")
        return self._design(features) @ self.coef_.T


def cross_fitted_rewards(
    make_model: Callable[[], RewardModel],
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    rng: np.random.Generator,
    n_folds: int = 2,
) -> np.ndarray:
    """Out-of-fold predictions ``(n, n_actions)``: each decision's row comes from a model fitted on the
    other folds (random folds from ``rng``), which keeps DR's per-decision terms independent enough for
    its interval."""
    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    folds = rng.permutation(len(actions)) % n_folds
    predictions: np.ndarray | None = None
    for k in range(n_folds):
        held = folds == k
        model = make_model().fit(features[~held], actions[~held], rewards[~held])
        fold_predictions = model.predict(features[held])
        if predictions is None:
            predictions = np.zeros((len(actions), fold_predictions.shape[1]))
        predictions[held] = fold_predictions
    assert predictions is not None
    return predictions
