"""The offer policy: a reward model's scores per action turned into exact action probabilities.

The policy explores, so that the logs it produces stay usable for off-policy evaluation: every action
keeps a probability of at least ``epsilon / n_actions`` (overlap for any later target).  Greedy (best
score, ties split evenly) or softmax over the scores, mixed with ``epsilon`` uniform.  :func:`fit_offer_policy` fits
the non-private :class:`tasks.campaigns.reward.PerActionRidge` (the reference); the pipeline scores
with the user-level DP-SGD model of :mod:`tasks.campaigns.dp_reward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.campaigns.reward import PerActionRidge, RewardModel


def greedy(scores: np.ndarray) -> np.ndarray:
    """Probability 1 on the best-scoring action of each row, split evenly among exact ties."""
    best = scores == scores.max(axis=1, keepdims=True)
    return best / best.sum(axis=1, keepdims=True)


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``exp(score / temperature)`` normalised per row (temperature in the reward's unit, > 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    z = (scores - scores.max(axis=1, keepdims=True)) / temperature
    weights = np.exp(z)
    return weights / weights.sum(axis=1, keepdims=True)


def explore(probs: np.ndarray, epsilon: float) -> np.ndarray:
    """``(1 - epsilon) * probs + epsilon / n_actions``: every action keeps at least epsilon / n_actions."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], not {epsilon}")
    return (1.0 - epsilon) * probs + epsilon / probs.shape[1]


@dataclass(frozen=True)
class OfferPolicy:
    """A fitted reward model and how its scores become action probabilities."""

    model: RewardModel
    epsilon: float = 0.1
    temperature: float | None = None  # None: greedy; else softmax at this temperature

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(len(features), n_actions)`` exact action probabilities for customers with ``features``."""
        scores = self.model.predict(features)
        base = greedy(scores) if self.temperature is None else softmax(scores, self.temperature)
        return explore(base, self.epsilon)


def fit_offer_policy(
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    n_actions: int,
    *,
    epsilon: float = 0.1,
    temperature: float | None = None,
    alpha: float = 1.0,
) -> OfferPolicy:
    """A per-action ridge fitted on a logged campaign (features of each decision's customer)."""
    model = PerActionRidge(n_actions, alpha=alpha).fit(features, actions, rewards)
    return OfferPolicy(model, epsilon=epsilon, temperature=temperature)
