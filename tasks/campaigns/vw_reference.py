"""Vowpal Wabbit's ``--cb_explore_adf`` on the same logs: the NON-private reference for the offer policy.

VW learns a contextual bandit from logged (context, action, cost, propensity) tuples with its own
off-policy reduction (``--cb_type`` ips/dr/mtr; ``mtr`` by default) and explores epsilon-greedily, so
its policy is comparable to :class:`tasks.campaigns.policy.OfferPolicy` and is judged with the same
estimators (:mod:`tasks.campaigns.ope`) and, in the benchmark, by its true value on the simulator.

It is a reference only: trained without any DP mechanism on every user's decisions, it is not charged
to the ledger, and neither it nor its estimates are registered, published or released to consumers
(docs/campaigns.md).  Its exploration draws and example order come from the generator the caller
passes: it is not a privacy mechanism.  vowpalwabbit is imported at module level: only the benchmark
and its tests import this module, never a DAG file or the CLI.

ADF layout of one decision: a ``shared`` line with the customer's context (namespace ``U``) and one
line per action (namespace ``A``: the action's id), with ``-q UA`` so every context feature interacts
with every action; the chosen action's line carries ``0:cost:propensity`` with cost = -reward / scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vowpalwabbit import Workspace


def _shared(row: np.ndarray) -> str:
    return "shared |U " + " ".join(f"f{j}:{value:.6g}" for j, value in enumerate(row))


@dataclass
class VwReference:
    """A VW ``cb_explore_adf`` policy over ``n_actions`` actions (action 0 = no offer)."""

    n_actions: int
    epsilon: float = 0.1
    cb_type: str = "mtr"
    passes: int = 1
    reward_scale: float = 10.0
    _vw: Any = field(default=None, repr=False)

    def _arguments(self, seed: int) -> str:
        return (
            f"--cb_explore_adf --cb_type {self.cb_type} -q UA --epsilon {self.epsilon} "
            f"--random_seed {seed} --quiet"
        )

    def _actions(self, chosen: int | None = None, cost: float = 0.0, prob: float = 1.0) -> list[str]:
        lines = []
        for a in range(self.n_actions):
            label = f"0:{cost:.6g}:{prob:.6g} " if a == chosen else ""
            lines.append(f"{label}|A a{a}")
        return lines

    def fit(
        self,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        propensities: np.ndarray,
        rng: np.random.Generator,
    ) -> VwReference:
        """Learn from the logged decisions (``passes`` shuffled passes, order from ``rng``)."""
        if not (len(features) == len(actions) == len(rewards) == len(propensities)):
            raise ValueError("features, actions, rewards and propensities must have one row per decision")
        if ((propensities <= 0) | (propensities > 1)).any():
            raise ValueError("every propensity must lie in (0, 1]")
        self._vw = Workspace(self._arguments(int(rng.integers(1, 2**31 - 1))))
        for _ in range(self.passes):
            for i in rng.permutation(len(actions)):
                cost = -float(rewards[i]) / self.reward_scale
                example = [
                    _shared(features[i]),
                    *self._actions(int(actions[i]), cost, float(propensities[i])),
                ]
                self._vw.learn(example)
        return self

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(len(features), n_actions)`` VW's exploring action probabilities per customer."""
        if self._vw is None:
            raise RuntimeError("VwReference.probabilities before fit")
        out = np.empty((len(features), self.n_actions))
        for i, row in enumerate(features):
            out[i] = self._vw.predict([_shared(row), *self._actions()])
        return out / out.sum(axis=1, keepdims=True)

    def close(self) -> None:
        if self._vw is not None:
            self._vw.finish()
            self._vw = None


def fit_vw_reference(
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    n_actions: int,
    rng: np.random.Generator,
    **settings: Any,
) -> VwReference:
    """:class:`VwReference` fitted on one log (``settings``: epsilon, cb_type, passes, reward_scale)."""
    return VwReference(n_actions, **settings).fit(features, actions, rewards, propensities, rng)
