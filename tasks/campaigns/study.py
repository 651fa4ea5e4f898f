"""The off-policy estimators checked against the simulator's truth over many independent logs.

Used by the unit tests (coverage, bias, spread) and by ``python -m benchmarks.campaigns_ope``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.campaigns import ope, reward, simulator

ESTIMATORS = ("ips", "snips", "dr")


def estimate_all(
    population: simulator.Population,
    decisions: simulator.Decisions,
    target: np.ndarray,
    rng: np.random.Generator,
    baseline: np.ndarray | None = None,
) -> dict[str, ope.Estimate]:
    """IPS, SNIPS and DR (cross-fitted per-action ridge) of ``target`` (per customer) on one log; with
    ``baseline``, of the target's value minus the baseline's (:func:`tasks.campaigns.ope.incremental`)."""
    probs, log = target[decisions.users], decisions.logged()
    q = reward.cross_fitted_rewards(
        lambda: reward.PerActionRidge(population.n_actions),
        population.features()[decisions.users],
        log.actions,
        log.rewards,
        rng,
    )
    if baseline is not None:
        base = baseline[decisions.users]
        return {name: ope.incremental(name, log, probs, base, predicted_rewards=q) for name in ESTIMATORS}
    return {
        "ips": ope.ips(log, probs),
        "snips": ope.snips(log, probs),
        "dr": ope.doubly_robust(log, probs, q),
    }


@dataclass(frozen=True)
class Study:
    """Estimates of one target over ``n_logs`` independent logs, and the target's true value."""

    truth: float
    estimates: dict[str, list[ope.Estimate]]

    def covered(self, estimator: str) -> int:
        return sum(e.covers(self.truth) for e in self.estimates[estimator])

    def values(self, estimator: str) -> np.ndarray:
        return np.array([e.value for e in self.estimates[estimator]])

    def summary(self) -> dict[str, dict[str, float]]:
        """Per estimator: coverage rate, bias of the mean, spread of the values, mean standard error."""
        out = {}
        for name, estimates in self.estimates.items():
            values = self.values(name)
            out[name] = {
                "coverage": self.covered(name) / len(estimates),
                "bias": float(values.mean() - self.truth),
                "sd": float(values.std(ddof=1)),
                "mean_se": float(np.mean([e.std_error for e in estimates])),
            }
        return out


def repeat_logs(
    population: simulator.Population,
    logging: np.ndarray,
    target: np.ndarray,
    *,
    n_logs: int,
    n_decisions: int,
    rng: np.random.Generator,
    baseline: np.ndarray | None = None,
) -> Study:
    """Draw ``n_logs`` logs of ``n_decisions`` from ``logging`` and estimate ``target`` on each (minus
    ``baseline`` when given, against the true difference)."""
    estimates: dict[str, list[ope.Estimate]] = {name: [] for name in ESTIMATORS}
    for _ in range(n_logs):
        decisions = simulator.draw_decisions(population, logging, n_decisions, rng)
        for name, estimate in estimate_all(population, decisions, target, rng, baseline).items():
            estimates[name].append(estimate)
    truth = simulator.true_value(population, target)
    if baseline is not None:
        truth -= simulator.true_value(population, baseline)
    return Study(truth, estimates)
