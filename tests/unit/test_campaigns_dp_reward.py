"""The user-level DP reward model: one example per user, trained with Opacus DP-SGD under a ledger
charge; at epsilon 8 its policy beats uniform logging in truth, and the ledger verifies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from tasks.campaigns import dp_reward, policy, simulator
from tasks.config import Settings
from tasks.privacy.accounting import LEDGER_ACCOUNTANT, compose_epsilon
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.verify import verify_settings

WINDOW = (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 29, tzinfo=dt.UTC))


def test_group_by_user_keeps_one_row_per_user_and_at_most_cap_k_decisions() -> None:
    users = np.array(["b", "a", "b", "b", "c", "b"])
    features = np.array([[2.0], [1.0], [2.0], [2.0], [3.0], [2.0]])
    actions = np.array([1, 0, 2, 3, 4, 1])
    rewards = np.array([10.0, 1.0, 20.0, 30.0, 4.0, 10.0])
    grouped = dp_reward.group_by_user(users, features, actions, rewards, cap_k=2)
    assert grouped.user_ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(grouped.features[:, 0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(grouped.mask.sum(axis=1), [1, 2, 1])
    kept_b = {(int(a), float(r)) for a, r in zip(grouped.actions[1], grouped.rewards[1], strict=True)}
    assert kept_b <= {(1, 10.0), (2, 20.0), (3, 30.0)}
    assert grouped.rewards[0].tolist() == [1.0, 0.0]
    assert grouped.rewards[2].tolist() == [4.0, 0.0]
    with pytest.raises(ValueError, match="cap_k must be >= 1"):
        dp_reward.group_by_user(users, features, actions, rewards, cap_k=0)


def test_dp_model_at_epsilon_8_beats_uniform_logging_and_its_charge_verifies(shoprec_home: Settings) -> None:
    """20,000 uniformly logged decisions of the default shop (1,500 users); the DP-SGD model's
    epsilon-greedy policy is worth more than uniform logging by over 0.5 per customer in truth; the
    ledger holds one committed charge for it whose epsilon is the mechanism's at the ledger's delta
    (at most 8), and the independent verification passes."""
    settings = shoprec_home.model_copy(update={"privacy_epsilon_cap": 20.0})
    population = simulator.build_population(np.random.default_rng(1))
    features = population.features()
    log = simulator.draw_decisions(
        population, simulator.uniform(population), 20_000, np.random.default_rng(21)
    )
    config = dp_reward.DpRewardConfig()
    examples = dp_reward.group_by_user(
        population.user_id[log.users], features[log.users], log.actions, log.rewards, config.cap_k
    )

    def train() -> dp_reward.ChargedModel:
        return dp_reward.train_charged(
            settings,
            run_key="offers-test-1",
            examples=examples,
            n_actions=population.n_actions,
            data_window=WINDOW,
            epsilon=8.0,
            config=config,
        )

    trained = train()
    learned = policy.OfferPolicy(trained.model, epsilon=0.1).probabilities(features)
    uniform_value = simulator.true_value(population, simulator.uniform(population))
    assert simulator.true_value(population, learned) > uniform_value + 0.5

    ledger = open_ledger(settings)
    try:
        charges = [c for c in ledger.charges(settings.privacy_scope) if c.purpose == dp_reward.PURPOSE]
    finally:
        ledger.close()
    assert len(charges) == 1
    charge = charges[0]
    assert str(charge.status) == "committed"
    assert charge.artifact_uri == trained.model_path
    assert charge.accountant == LEDGER_ACCOUNTANT
    assert charge.n_users == 1500
    assert charge.delta == pytest.approx(1 / 15_000)
    assert charge.epsilon == pytest.approx(compose_epsilon([charge.mechanism], charge.delta))
    assert 7.5 < charge.epsilon <= 8.0 + 1e-6
    assert charge.mechanism.sample_rate == trained.sample_rate
    assert charge.mechanism.steps == trained.steps
    result = verify_settings(settings, use_registry=False)
    assert result.ok, result.describe()
    assert result.charges_checked == 1

    with pytest.raises(RuntimeError, match="already committed"):
        train()  # the same run again: its charge is spent
    reloaded = dp_reward.load_model(Path(trained.model_path))
    np.testing.assert_allclose(reloaded.predict(features[:5]), trained.model.predict(features[:5]), rtol=1e-6)
