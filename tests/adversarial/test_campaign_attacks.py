"""Attacks on the user-level DP release of off-policy estimates (issue #18, ``tasks/campaigns``).

The release (``tasks.campaigns.release``) claims: adding or removing one user changes its fixed-point
vector by at most ``UNIT * sqrt(2 * quantities + 1)`` in L2 norm, the sensitivity its discrete
Gaussian noise is calibrated to.  Each test below is one user who, on the code before the fix, moved
the vector by far more than that:

- a user whose per-decision term is not a number (a propensity so small that ``1 / p`` overflows,
  times a zero reward): ``rint(nan)`` cast to int64 is -2**63, which no noise hides.

And the delta: the scope's policy fixes one delta (1 / (10 n) of the run that created it); an offer
log over more than 1 / delta users got its DP-SGD model and its release under that delta anyway.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from tasks.campaigns import release
from tasks.campaigns.dp_reward import DpRewardConfig, group_by_user, train_charged
from tasks.campaigns.simulator import FEATURE_NAMES
from tasks.config import Settings
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.policy import budget_for_run

CLIP = 30.0


def _sensitivity(n_quantities: int) -> float:
    return release.UNIT * math.sqrt(2 * n_quantities + 1)


def _l2(a: list[int], b: list[int]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))


def test_a_user_with_a_non_finite_term_moves_the_release_by_at_most_the_sensitivity() -> None:
    rng = np.random.default_rng()
    users = np.repeat([f"u{i}" for i in range(200)], 3)
    honest = {"ips:x": rng.normal(2.0, 5.0, len(users)), "dr:x": rng.normal(1.0, 3.0, len(users))}
    # propensity 1e-320 passes the (0, 1] gate; 1 / 1e-320 overflows to inf, times a zero reward is nan
    with np.errstate(over="ignore", invalid="ignore"):
        weight = np.float64(1.0) / np.float64(1e-320)
        attacker = {"ips:x": np.array([weight * 0.0]), "dr:x": np.array([np.inf, -np.inf]).sum(keepdims=True)}
    assert np.isnan(attacker["ips:x"]).all()
    assert np.isnan(attacker["dr:x"]).all()
    with_attacker = {k: np.r_[v, attacker[k]] for k, v in honest.items()}
    without = release.fixed_point_vector(users, honest, CLIP)
    with np.errstate(invalid="ignore"):
        joined = release.fixed_point_vector(np.r_[users, ["mallory"]], with_attacker, CLIP)
    assert _l2(without, joined) <= _sensitivity(len(honest)) + 1e-9


def _scope_policy_set_on(settings: Settings, n_users: int) -> float:
    """The scope's policy as a run over ``n_users`` creates it (delta 1 / (10 n_users)), e.g. the
    recommender's training on a smaller population than the offer log's."""
    ledger = open_ledger(settings)
    try:
        return budget_for_run(ledger, settings, n_users=n_users).delta
    finally:
        ledger.close()


def _offer_charges(settings: Settings) -> list[str]:
    ledger = open_ledger(settings)
    try:
        return [c.purpose for c in ledger.charges(settings.privacy_scope) if c.purpose.startswith("offer_")]
    finally:
        ledger.close()


WINDOW = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 29, tzinfo=dt.UTC))


def test_a_release_over_more_users_than_one_over_delta_is_refused(shoprec_home: Settings) -> None:
    """The scope's delta (set on 100 users: 1e-3) is no guarantee for 5,000 users: at delta > 1/n the
    mechanism may expose a whole user's data with probability delta, i.e. about five users for sure."""
    delta = _scope_policy_set_on(shoprec_home, 100)
    users = np.array([f"u{i}" for i in range(5000)])
    assert delta > 1.0 / len(users)
    with pytest.raises(ValueError, match="exceeds 1/n_users"):
        release.release_charged(
            shoprec_home,
            run_key="attack-delta",
            user_ids=users,
            terms={"ips:x": np.ones(len(users))},
            clip=CLIP,
            epsilon=1.0,
            data_window=WINDOW,
            data_hash="rows:5000",
        )
    assert _offer_charges(shoprec_home) == []


def test_dp_sgd_over_more_users_than_one_over_delta_is_refused(shoprec_home: Settings) -> None:
    delta = _scope_policy_set_on(shoprec_home, 100)
    n = 5000
    rng = np.random.default_rng()
    examples = group_by_user(
        np.array([f"u{i}" for i in range(n)]),
        rng.normal(size=(n, len(FEATURE_NAMES))),
        rng.integers(0, 3, n),
        rng.normal(size=n),
        cap_k=4,
    )
    assert delta > 1.0 / n
    with pytest.raises(ValueError, match="exceeds 1/n_users"):
        train_charged(
            shoprec_home,
            run_key="attack-delta",
            examples=examples,
            n_actions=3,
            data_window=WINDOW,
            epsilon=2.0,
            config=DpRewardConfig(epochs=1),
        )
    assert _offer_charges(shoprec_home) == []
