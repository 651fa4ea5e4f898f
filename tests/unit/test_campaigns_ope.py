"""Off-policy estimators against the simulator's true values.

400 independent logs of 5,000 decisions each, from the uniform logging policy and from the business
rule (explore 0.1), evaluate the oracle policy (each customer's best action, known from the simulator).
Stated rate on the uniform log: at least 360 of 400 95% intervals (90%) cover the truth; if they covered
it exactly 95% of the time, fewer would with probability 1.4e-5 (binomial).  On the business-rule log
the weights reach 1 / 0.02 = 50 and the normal approximation is rougher (93.6-94.9% coverage over
1,000 logs, docs/campaigns.md): the stated rate there is at least 340 of 400 (85%).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from tasks.campaigns import ope, simulator
from tasks.campaigns.study import ESTIMATORS, Study, repeat_logs

N_LOGS = 400
N_DECISIONS = 5_000


@pytest.fixture(scope="module")
def population() -> simulator.Population:
    return simulator.build_population(np.random.default_rng(1))


def study(
    population: simulator.Population, logging: np.ndarray, seed: int, baseline: np.ndarray | None = None
) -> Study:
    target = simulator.oracle(population)
    rng = np.random.default_rng(seed)
    return repeat_logs(
        population, logging, target, n_logs=N_LOGS, n_decisions=N_DECISIONS, rng=rng, baseline=baseline
    )


@pytest.fixture(scope="module")
def uniform_logs(population: simulator.Population) -> Study:
    return study(population, simulator.uniform(population), seed=11)


@pytest.fixture(scope="module")
def uniform_incremental(population: simulator.Population) -> Study:
    """The oracle's value minus offering to nobody (the gate's kind of question), on uniform logs."""
    return study(population, simulator.uniform(population), seed=13, baseline=simulator.nobody(population))


@pytest.fixture(scope="module")
def rule_logs(population: simulator.Population) -> Study:
    return study(population, simulator.business_rule(population), seed=12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_intervals_cover_the_true_value_on_the_uniform_log(uniform_logs: Study, estimator: str) -> None:
    assert uniform_logs.covered(estimator) >= 360


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_incremental_intervals_cover_the_true_difference_on_the_uniform_log(
    uniform_incremental: Study, estimator: str
) -> None:
    assert uniform_incremental.truth == pytest.approx(6.074 - 2.682, abs=1e-3)
    assert uniform_incremental.covered(estimator) >= 360


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_intervals_cover_the_true_value_on_the_business_rule_log(rule_logs: Study, estimator: str) -> None:
    assert rule_logs.covered(estimator) >= 340


@pytest.mark.parametrize("log", ["uniform_logs", "rule_logs"])
def test_ips_is_unbiased(log: str, request: pytest.FixtureRequest) -> None:
    """The mean of 400 IPS estimates lies within 4 standard errors (of that mean) of the truth."""
    logs: Study = request.getfixturevalue(log)
    values = logs.values("ips")
    assert abs(values.mean() - logs.truth) <= 4 * values.std(ddof=1) / np.sqrt(N_LOGS)


def test_snips_and_dr_vary_less_than_ips_on_the_business_rule_log(rule_logs: Study) -> None:
    spread = {name: rule_logs.values(name).std(ddof=1) for name in ESTIMATORS}
    assert spread["snips"] < 0.9 * spread["ips"]
    assert spread["dr"] < 0.9 * spread["ips"]


def test_estimates_by_hand() -> None:
    # three decisions, two actions; the target always takes action 1
    log = ope.LoggedDecisions(np.array([1, 0, 1]), np.array([4.0, 9.0, 2.0]), np.array([0.5, 0.5, 0.25]))
    target = np.array([[0.0, 1.0]] * 3)
    # weights 2, 0, 4: IPS (8 + 0 + 8) / 3; SNIPS (8 + 8) / (2 + 0 + 4)
    assert ope.ips(log, target).value == pytest.approx(16 / 3)
    assert ope.snips(log, target).value == pytest.approx(16 / 6)
    q = np.array([[1.0, 3.0]] * 3)
    # DR: 3 + weight * (reward - 3): 3 + 2, 3 + 0, 3 + 4 * (-1)
    dr = ope.doubly_robust(log, target, q)
    assert dr.value == pytest.approx((5 + 3 - 1) / 3)
    assert dr.std_error == pytest.approx(np.std([5, 3, -1], ddof=1) / np.sqrt(3))
    assert dr.low == pytest.approx(dr.value - 1.959964 * dr.std_error)
    # target minus "always action 0": IPS terms (8, 0, 8) - (0, 18, 0) = (8, -18, 8)
    difference = ope.incremental("ips", log, target, np.array([[1.0, 0.0]] * 3))
    assert difference.value == pytest.approx(-2 / 3)
    assert difference.std_error == pytest.approx(np.std([8, -18, 8], ddof=1) / np.sqrt(3))
    with pytest.raises(ValueError, match="the dr estimator needs predicted_rewards"):
        ope.incremental("dr", log, target, target)
    with pytest.raises(ValueError, match="unknown estimator 'cate'"):
        ope.incremental("cate", log, target, target)


def test_no_overlap_is_refused_in_one_line() -> None:
    population = simulator.build_population(np.random.default_rng(2))
    rule = simulator.business_rule(population, explore=0.0)
    d = simulator.draw_decisions(population, rule, 2_000, np.random.default_rng(3))
    target = simulator.everybody(population, "pct10")[d.users]
    with pytest.raises(ope.OverlapError, match=r"^no overlap: the target policy gives actions \[1\]") as info:
        ope.ips(d.logged(), target)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.2, np.nan])
def test_invalid_propensities_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="1 logged propensities are missing or outside"):
        ope.LoggedDecisions(np.array([0, 1]), np.array([1.0, 2.0]), np.array([0.5, bad]))


def test_gated_exposures_become_logged_decisions() -> None:
    population = simulator.build_population(np.random.default_rng(2))
    rng = np.random.default_rng(4)
    d = simulator.draw_decisions(population, simulator.uniform(population), 300, rng)
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    exposures = simulator.exposures_frame(
        population, d, policy_name="u", policy_version="1", start=start, rng=rng
    )
    log = ope.LoggedDecisions.from_exposures(exposures, population.actions)
    np.testing.assert_array_equal(log.actions, d.actions)
    np.testing.assert_allclose(log.rewards, d.rewards)
    np.testing.assert_allclose(log.propensities, d.propensities)
    with pytest.raises(ValueError, match=r"exposures name actions outside \['no_offer'\]: \['amt5'"):
        ope.LoggedDecisions.from_exposures(exposures, ("no_offer",))
