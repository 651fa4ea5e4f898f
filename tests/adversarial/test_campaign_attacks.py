"""Attacks on the user-level DP release of off-policy estimates (issue #18, ``tasks/campaigns``).

The release (``tasks.campaigns.release``) claims: adding or removing one user changes its fixed-point
vector by at most ``UNIT * sqrt(2 * quantities + 1)`` in L2 norm, the sensitivity its discrete
Gaussian noise is calibrated to.  Each test below is one user who, on the code before the fix, moved
the vector by far more than that:

- a user whose per-decision term is not a number (a propensity so small that ``1 / p`` overflows,
  times a zero reward): ``rint(nan)`` cast to int64 is -2**63, which no noise hides;
- a user with ten times the decisions and extreme rewards, who moved *other* users' doubly robust
  terms through the non-private reward model fitted on everybody's decisions.

And the delta: the scope's policy fixes one delta (1 / (10 n) of the run that created it); an offer
log over more than 1 / delta users got its DP-SGD model and its release under that delta anyway.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from tasks.campaigns import ope, pipeline, release
from tasks.campaigns.dp_reward import DpRewardConfig, DpRewardModel, RewardNet, group_by_user, train_charged
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


def _run_log(n_users: int, per_user: int, rng: np.random.Generator) -> pipeline.RunLog:
    """A uniformly logged campaign over 3 actions (no offer and two offers)."""
    actions = ("no_offer", "pct10", "amt5")
    ids = [f"u{i:04d}" for i in range(n_users)]
    customers = pd.DataFrame(rng.normal(size=(n_users, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    customers.insert(0, "user_id", ids)
    user_ids = np.repeat(ids, per_user)
    features = customers.set_index("user_id").loc[user_ids, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    exposures = pd.DataFrame({"user_id": user_ids, "redemption_cost": np.zeros(len(user_ids))})
    decisions = ope.LoggedDecisions(
        actions=rng.integers(0, 3, len(user_ids)),
        rewards=rng.normal(1.0, 2.0, len(user_ids)),
        propensities=np.full(len(user_ids), 1 / 3),
    )
    return pipeline.RunLog(actions, exposures, decisions, user_ids.astype(str), features, customers)


def _fixed_reward_model() -> DpRewardModel:
    """A reward model that does not depend on the log (as the released DP model, post-processing)."""
    return DpRewardModel(RewardNet(len(FEATURE_NAMES), 3, hidden=8), reward_scale=10.0)


def test_one_user_cannot_move_other_users_doubly_robust_terms() -> None:
    """Mallory (10x the decisions, profit 10,000 each) joins the log: the DR terms of everybody else must
    not move, or the release's sensitivity (one user's own clipped mean) is no bound at all."""
    rng = np.random.default_rng()
    n_users, per_user = 300, 3
    base = _run_log(n_users, per_user, rng)
    attacked = _run_log_with_mallory(base, 10 * per_user)
    candidate = pd.DataFrame(
        {"user_id": attacked.customers["user_id"], "no_offer": 0.2, "pct10": 0.5, "amt5": 0.3}
    )
    model = _fixed_reward_model()
    before = pipeline.estimate_terms(base, candidate, model)
    after = pipeline.estimate_terms(attacked, candidate, model)
    dr = [name for name in before if name.startswith("dr:")]
    honest = base.user_ids
    others_before = release.fixed_point_vector(honest, {k: before[k] for k in dr}, CLIP)
    others_after = release.fixed_point_vector(honest, {k: after[k][: len(honest)] for k in dr}, CLIP)
    # Mallory's own row adds at most the sensitivity; everybody else's must add nothing
    assert others_after == others_before
    full_after = release.fixed_point_vector(attacked.user_ids, {k: after[k] for k in dr}, CLIP)
    assert _l2(others_before, full_after) <= _sensitivity(len(dr)) + 1e-9


def _run_log_with_mallory(base: pipeline.RunLog, decisions: int) -> pipeline.RunLog:
    features = np.full((decisions, len(FEATURE_NAMES)), 3.0)
    customers = pd.concat(
        [base.customers, pd.DataFrame(features[:1], columns=list(FEATURE_NAMES)).assign(user_id="mallory")],
        ignore_index=True,
    )
    user_ids = np.r_[base.user_ids, ["mallory"] * decisions].astype(str)
    d = base.decisions
    logged = ope.LoggedDecisions(
        actions=np.r_[d.actions, np.ones(decisions, dtype=np.int64)],
        rewards=np.r_[d.rewards, np.full(decisions, 1e4)],
        propensities=np.r_[d.propensities, np.full(decisions, 1 / 3)],
    )
    exposures = pd.DataFrame({"user_id": user_ids, "redemption_cost": np.zeros(len(user_ids))})
    return pipeline.RunLog(
        base.actions, exposures, logged, user_ids, np.r_[base.features, features], customers
    )


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
