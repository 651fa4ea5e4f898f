"""Off-policy evaluation: the value of a target policy estimated from a log another policy produced.

Inputs (:class:`LoggedDecisions`) per logged decision ``i``: the logged action ``a_i``, its reward
``r_i`` (profit), the logging policy's propensity ``p_i`` of ``a_i`` (in (0, 1]); and the target
policy's action probabilities ``pi_i`` (one row per decision).  With importance weights ``w_i = pi_i[a_i] / p_i``:

- IPS (inverse propensity scoring): mean of ``w_i r_i``; unbiased when the logging policy gives every
  action the target can take a positive probability (overlap / positivity).
- SNIPS (self-normalised IPS): ``sum w_i r_i / sum w_i``; slightly biased, lower variance when the
  weights are uneven; its interval uses the delta method (influence terms ``w_i (r_i - V) / mean(w)``).
- DR (doubly robust): mean of ``sum_a pi_i[a] q_i[a] + w_i (r_i - q_i[a_i])`` with a reward model's
  predictions ``q`` (cross-fitted by :func:`tasks.campaigns.reward.cross_fitted_rewards`, so a
  decision's own reward never predicts itself); unbiased if the propensities are right, whatever the
  reward model.

Intervals are normal approximations over the per-decision terms (decisions independent).  When the
logging policy's probabilities of all actions are known (``logging_probs``), a target that puts
probability on an action the logging policy never takes for that customer is refused with
:class:`OverlapError`: no amount of logged data identifies its value.

Why small functions and not a library: see docs/campaigns.md ("Why these libraries").
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

from tasks.campaigns.contracts import profit


class OverlapError(ValueError):
    """The target policy takes an action the logging policy never takes there: IPS/DR are undefined."""


@dataclass(frozen=True)
class Estimate:
    """An estimated policy value with its standard error and a two-sided interval at ``level``."""

    estimator: str
    value: float
    std_error: float
    low: float
    high: float
    level: float
    n: int

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


def _interval(estimator: str, value: float, influence: np.ndarray, level: float) -> Estimate:
    n = len(influence)
    std_error = float(np.std(influence, ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return Estimate(estimator, value, std_error, value - z * std_error, value + z * std_error, level, n)


@dataclass(frozen=True)
class LoggedDecisions:
    """A logged campaign as arrays, one entry per decision: action index, reward, its propensity and,
    when known, the logging policy's probabilities of every action (``(n, n_actions)``)."""

    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    logging_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.actions)
        if n == 0:
            raise ValueError("off-policy evaluation needs at least one logged decision")
        if self.rewards.shape != (n,) or self.propensities.shape != (n,):
            raise ValueError(
                f"shapes do not match: {n} actions, rewards {self.rewards.shape}, "
                f"propensities {self.propensities.shape}"
            )
        valid = (self.propensities > 0) & (self.propensities <= 1)  # NaN fails both comparisons
        if not valid.all():
            raise ValueError(
                f"{int((~valid).sum())} logged propensities are missing or outside (0, 1]: "
                "quarantine those rows first"
            )
        if self.logging_probs is not None and self.logging_probs.shape[0] != n:
            raise ValueError(f"logging probabilities {self.logging_probs.shape} for {n} decisions")

    @classmethod
    def from_exposures(cls, exposures: pd.DataFrame, actions: tuple[str, ...]) -> LoggedDecisions:
        """Gated ``exposures`` rows; ``actions`` names the action indices (``actions[0]`` = no offer)."""
        index = {action: i for i, action in enumerate(actions)}
        unknown = sorted(set(exposures["offer_id"]) - set(index))
        if unknown:
            raise ValueError(f"exposures name actions outside {list(actions)}: {unknown[:5]}")
        return cls(
            actions=exposures["offer_id"].map(index).to_numpy(dtype=np.int64),
            rewards=profit(exposures),
            propensities=exposures["propensity"].to_numpy(dtype=float),
        )

    @property
    def n(self) -> int:
        return len(self.actions)

    def weights(self, target_probs: np.ndarray) -> np.ndarray:
        """Importance weights ``pi_i[a_i] / p_i`` after checking the target's rows and overlap."""
        if target_probs.ndim != 2 or target_probs.shape[0] != self.n:
            raise ValueError(f"target probabilities {target_probs.shape}: one row per decision ({self.n})")
        if (target_probs < 0).any() or not np.allclose(target_probs.sum(axis=1), 1.0):
            raise ValueError("target action probabilities must be >= 0 and sum to 1 on every row")
        if self.logging_probs is not None:
            if self.logging_probs.shape != target_probs.shape:
                raise ValueError(
                    f"logging probabilities {self.logging_probs.shape} != target {target_probs.shape}"
                )
            unsupported = (target_probs > 0) & (self.logging_probs <= 0)
            if unsupported.any():
                actions_off = sorted({int(a) for a in np.nonzero(unsupported)[1]})
                raise OverlapError(
                    f"no overlap: the target policy gives actions {actions_off} a positive probability on "
                    f"{int(unsupported.any(axis=1).sum())} decisions where the logging policy's is 0; "
                    "IPS, SNIPS and DR are undefined there"
                )
        return target_probs[np.arange(self.n), self.actions] / self.propensities


# Each estimator as (value, influence terms): the interval is built from the terms' spread, and the
# difference of two policies on the same log from the paired differences of their terms.


def _ips(log: LoggedDecisions, target_probs: np.ndarray) -> tuple[float, np.ndarray]:
    terms = log.weights(target_probs) * log.rewards
    return float(terms.mean()), terms


def _snips(log: LoggedDecisions, target_probs: np.ndarray) -> tuple[float, np.ndarray]:
    weights = log.weights(target_probs)
    mean_weight = float(weights.mean())
    if mean_weight == 0:
        raise OverlapError(
            "no overlap: the target policy gives every logged action probability 0; SNIPS is undefined"
        )
    value = float((weights * log.rewards).sum() / weights.sum())
    return value, weights * (log.rewards - value) / mean_weight


def _dr(
    log: LoggedDecisions, target_probs: np.ndarray, predicted_rewards: np.ndarray
) -> tuple[float, np.ndarray]:
    weights = log.weights(target_probs)
    if predicted_rewards.shape != target_probs.shape:
        raise ValueError(f"predicted rewards {predicted_rewards.shape} != target {target_probs.shape}")
    direct = (target_probs * predicted_rewards).sum(axis=1)
    terms = direct + weights * (log.rewards - predicted_rewards[np.arange(log.n), log.actions])
    return float(terms.mean()), terms


def ips(log: LoggedDecisions, target_probs: np.ndarray, *, level: float = 0.95) -> Estimate:
    """Inverse propensity scoring with a normal interval over the terms ``w_i r_i``."""
    return _interval("ips", *_ips(log, target_probs), level)


def snips(log: LoggedDecisions, target_probs: np.ndarray, *, level: float = 0.95) -> Estimate:
    """Self-normalised IPS with a delta-method interval."""
    return _interval("snips", *_snips(log, target_probs), level)


def doubly_robust(
    log: LoggedDecisions, target_probs: np.ndarray, predicted_rewards: np.ndarray, *, level: float = 0.95
) -> Estimate:
    """Doubly robust: the reward model's value of the target plus an IPS correction of its residuals.

    ``predicted_rewards`` is ``(n, n_actions)``: the model's expected reward of every action for each
    decision's customer, fitted without that decision
    (:func:`tasks.campaigns.reward.cross_fitted_rewards`).
    """
    return _interval("dr", *_dr(log, target_probs, predicted_rewards), level)


def terms(
    estimator: str,
    log: LoggedDecisions,
    target_probs: np.ndarray,
    predicted_rewards: np.ndarray | None = None,
) -> np.ndarray:
    """Per-decision terms of ``ips`` or ``dr`` (their mean is the estimate): what a DP release clips and
    sums per user (:mod:`tasks.campaigns.release`).  SNIPS is a ratio and has no such terms."""
    if estimator == "ips":
        return _ips(log, target_probs)[1]
    if estimator == "dr":
        if predicted_rewards is None:
            raise ValueError("the dr estimator needs predicted_rewards")
        return _dr(log, target_probs, predicted_rewards)[1]
    raise ValueError(f"per-decision terms exist for ips and dr only, not {estimator!r}")


def incremental(
    estimator: str,
    log: LoggedDecisions,
    target_probs: np.ndarray,
    baseline_probs: np.ndarray,
    *,
    predicted_rewards: np.ndarray | None = None,
    level: float = 0.95,
) -> Estimate:
    """Value of the target minus value of the baseline (e.g. offer to nobody, or the running policy),
    both estimated on the same log by ``estimator`` (``ips``, ``snips`` or ``dr``, which needs
    ``predicted_rewards``); the interval comes from the paired per-decision differences, so what the
    two policies share (the same customers and outcomes) does not widen it."""
    if estimator == "dr":
        if predicted_rewards is None:
            raise ValueError("the dr estimator needs predicted_rewards")
        value, influence = _dr(log, target_probs, predicted_rewards)
        base, base_influence = _dr(log, baseline_probs, predicted_rewards)
    elif estimator in ("ips", "snips"):
        one = _ips if estimator == "ips" else _snips
        value, influence = one(log, target_probs)
        base, base_influence = one(log, baseline_probs)
    else:
        raise ValueError(f"unknown estimator {estimator!r}: ips, snips or dr")
    return _interval(f"{estimator} incremental", value - base, influence - base_influence, level)
