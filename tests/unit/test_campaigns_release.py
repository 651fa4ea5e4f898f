"""DP release of off-policy estimates: one user moves the released vector by at most its stated L2
sensitivity, the charge is the mechanism's epsilon on the ledger, and the release is drawn once per
charge with fresh noise."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from tasks.campaigns import ope, release, reward, simulator
from tasks.config import Settings
from tasks.privacy.accounting import LEDGER_ACCOUNTANT, compose_epsilon
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.verify import verify_settings

WINDOW = (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 29, tzinfo=dt.UTC))


def test_one_user_moves_the_vector_by_at_most_the_sensitivity_whatever_their_terms() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 400).astype(str)
    terms = {"a": rng.normal(3, 5, 400), "b": rng.normal(0, 50, 400)}
    base = np.array(release.fixed_point_vector(users, terms, clip=10.0), dtype=float)
    attacker = {k: np.r_[v, [1e9, -1e9, 1e12]] for k, v in terms.items()}
    with_attacker = np.array(
        release.fixed_point_vector(np.r_[users, ["x"] * 3], attacker, clip=10.0), dtype=float
    )
    mechanism = release.release_mechanism(len(terms), noise_multiplier=1.0)
    assert np.linalg.norm(with_attacker - base) <= mechanism.l2_sensitivity
    assert mechanism.l2_sensitivity == pytest.approx(release.UNIT * math.sqrt(5))
    assert with_attacker[-1] - base[-1] == release.UNIT  # the count moves by one user


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_noise_is_calibrated_to_the_epsilon_asked(epsilon: float) -> None:
    noise = release.noise_for_epsilon(12, epsilon, 1e-5)
    assert compose_epsilon([release.release_mechanism(12, noise)], 1e-5) <= epsilon
    assert compose_epsilon([release.release_mechanism(12, noise * 0.99)], 1e-5) > epsilon


def test_charged_release_covers_the_truth_is_drawn_once_and_verifies(shoprec_home: Settings) -> None:
    """Oracle vs offering to nobody on 20,000 uniformly logged decisions (1,500 users) at epsilon 4:
    the released DR incremental value lies within 5 of its standard errors of the truth (3.391); the
    ledger holds one committed charge with that epsilon; a retry reads the same release back; a new
    run draws new noise."""
    settings = shoprec_home.model_copy(update={"privacy_epsilon_cap": 20.0})
    population = simulator.build_population(np.random.default_rng(1))
    log = simulator.draw_decisions(
        population, simulator.uniform(population), 20_000, np.random.default_rng(3)
    )
    features = population.features()[log.users]
    predicted = reward.cross_fitted_rewards(
        lambda: reward.PerActionRidge(population.n_actions),
        features,
        log.actions,
        log.rewards,
        np.random.default_rng(0),
    )
    target, nobody = simulator.oracle(population)[log.users], simulator.nobody(population)[log.users]
    gain = ope.terms("dr", log.logged(), target, predicted) - ope.terms("dr", log.logged(), nobody, predicted)
    terms = {"dr:oracle-nobody": gain, "on-policy": log.rewards}
    users = population.user_id[log.users]
    kwargs = dict(
        user_ids=users, terms=terms, clip=30.0, epsilon=4.0, data_window=WINDOW, data_hash="sha256:t"
    )

    first = release.release_charged(settings, run_key="ope-1", **kwargs)
    truth = simulator.true_incremental_value(population, simulator.oracle(population))
    assert abs(first[0].value - truth) < 5 * first[0].std_error
    assert first[0].std_error < 0.5
    assert first[0].epsilon == pytest.approx(4.0, rel=1e-3)
    assert first[0].accountant == LEDGER_ACCOUNTANT
    assert release.release_charged(settings, run_key="ope-1", **kwargs) == first
    second = release.release_charged(settings, run_key="ope-2", **kwargs)
    assert [r.value for r in second] != [r.value for r in first]

    ledger = open_ledger(settings)
    try:
        charges = [c for c in ledger.charges(settings.privacy_scope) if c.purpose == release.PURPOSE]
    finally:
        ledger.close()
    assert [c.run_id for c in charges] == ["ope-1", "ope-2"]
    assert all(str(c.status) == "committed" for c in charges)
    assert charges[0].delta == pytest.approx(first[0].delta)
    assert charges[0].epsilon == pytest.approx(first[0].epsilon)
    assert verify_settings(settings, use_registry=False).ok
