"""The one calibrate-then-reserve rule of DP-SGD runs (tasks.privacy.policy.dp_sgd_charge), used by
the recommender's trainer and the offer model's reward model alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.config import Settings
from tasks.privacy.accounting import (
    LEDGER_ACCOUNTANT,
    DiscreteGaussianCountMechanism,
    DpSgdMechanism,
    GaussianCountMechanism,
    Mechanism,
    compose_epsilon,
)
from tasks.privacy.ledger import BudgetExceeded, Charge, Ledger, calibrate_noise_multiplier
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.policy import budget_for_run, dp_sgd_charge

WINDOW = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 31, tzinfo=dt.UTC))
AT = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
Q, STEPS = 0.05, 200


def charge(ledger: Ledger, settings: Settings, run_key: str, epsilon: float | None, delta: float) -> Charge:
    reserved, mechanism = dp_sgd_charge(
        ledger,
        settings,
        run_key=run_key,
        purpose="train_recommender",
        sample_rate=Q,
        steps=STEPS,
        delta=delta,
        epsilon_target=epsilon,
        clip_norm=0.7,
        cap_k=12,
        data_window=WINDOW,
        at=AT,
        n_users=1000,
        code_version="test",
        data_hash="sha256:test",
    )
    assert mechanism == reserved.mechanism
    return reserved


@pytest.fixture
def settings(shoprec_home: Settings) -> Settings:
    return shoprec_home.model_copy(update={"privacy_epsilon_cap": 4.0})


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    opened = open_ledger(settings)
    yield opened
    opened.close()


def test_a_new_run_reserves_dp_sgd_with_the_noise_calibrated_to_its_target(
    settings: Settings, ledger: Ledger
) -> None:
    """The reserved mechanism is the run's (sample rate, steps, clip norm, cap_k) with the smallest
    noise that spends the target at the ledger's delta (ledger accountant, unit user)."""
    delta = budget_for_run(ledger, settings, n_users=1000).delta
    expected_noise = calibrate_noise_multiplier(
        ledger,
        scope=settings.privacy_scope,
        sample_rate=Q,
        steps=STEPS,
        delta=delta,
        epsilon_target=1.5,
        at=AT,
        max_noise_multiplier=settings.dp_max_noise_multiplier,
    )
    reserved = charge(ledger, settings, "run-1", 1.5, delta)
    assert reserved.mechanism == DpSgdMechanism(expected_noise, Q, STEPS, clip_norm=0.7, cap_k=12)
    assert str(reserved.status) == "reserved"
    assert reserved.accountant == LEDGER_ACCOUNTANT
    assert reserved.unit == "user"
    assert reserved.delta == pytest.approx(delta, rel=1e-12)
    assert reserved.data_window == WINDOW
    assert reserved.epsilon == pytest.approx(compose_epsilon([reserved.mechanism], delta), rel=1e-9)
    assert 1.45 < reserved.epsilon <= 1.5 + 1e-6


def test_a_retry_gets_its_reserved_charge_back_not_a_recalibration(
    settings: Settings, ledger: Ledger
) -> None:
    """Another run reserved in between (calibration would now give more noise) and the retry asks
    another target: it still resumes under its first charge, same id and noise multiplier."""
    delta = budget_for_run(ledger, settings, n_users=1000).delta
    first = charge(ledger, settings, "run-1", 1.5, delta)
    other = charge(ledger, settings, "run-2", None, delta)  # the rest of the cap
    assert other.mechanism.noise_multiplier != first.mechanism.noise_multiplier
    again = charge(ledger, settings, "run-1", 0.5, delta)
    assert (again.id, again.mechanism) == (first.id, first.mechanism)
    assert len(ledger.charges(settings.privacy_scope)) == 2


def test_a_committed_run_is_refused_and_a_run_that_cannot_fit_raises_budget_exceeded(
    settings: Settings, ledger: Ledger
) -> None:
    """Running a committed run again would train under a spent charge; a target the budget cannot
    grant (here below the ledger's 1e-6 resolution) reserves nothing."""
    delta = budget_for_run(ledger, settings, n_users=1000).delta
    spent = charge(ledger, settings, "run-1", None, delta)  # the whole cap
    ledger.commit(int(spent.id), model_version="1", artifact_uri="file:///model")
    with pytest.raises(RuntimeError, match=f"charge {spent.id} is already committed"):
        charge(ledger, settings, "run-1", 1.0, delta)
    with pytest.raises(BudgetExceeded, match="has nothing left"):
        charge(ledger, settings, "run-3", 1e-7, delta)
    assert len(ledger.charges(settings.privacy_scope)) == 1


def test_a_run_that_would_need_an_absurd_noise_multiplier_is_refused_reserving_nothing(
    settings: Settings, ledger: Ledger
) -> None:
    """Near the cap a run gets what is left: after a run up to the cap (2.5e-4 left at this schedule)
    the calibration handed the next run noise multiplier 63.3 (60x the first's 1.08) and reserved it.
    Above ``dp_max_noise_multiplier`` (50) the run is refused in one line, nothing reserved."""
    delta = budget_for_run(ledger, settings, n_users=1000).delta
    first = charge(ledger, settings, "run-1", None, delta)
    assert first.mechanism.noise_multiplier < 2
    assert 0 < settings.privacy_epsilon_cap - first.composed_epsilon < 1e-3
    with pytest.raises(BudgetExceeded) as refused:
        charge(ledger, settings, "run-2", None, delta)
    message = str(refused.value)
    assert "\n" not in message
    assert "too little left" in message
    assert "SHOPREC_DP_MAX_NOISE_MULTIPLIER" in message
    assert "nothing reserved" in message
    assert refused.value.remaining == pytest.approx(settings.privacy_epsilon_cap - first.composed_epsilon)
    assert [c.id for c in ledger.charges(settings.privacy_scope)] == [first.id]
    # a higher bound lets the same run through, with the noise the budget gives (above the default)
    allowed = charge(
        ledger, settings.model_copy(update={"dp_max_noise_multiplier": 100.0}), "run-2", None, delta
    )
    assert 50 < allowed.mechanism.noise_multiplier <= 100


# (sample rate, steps, epsilon target (None: up to the cap 10), delta, a charge already spent) and the
# noise multiplier the ledger calibrated on main before the one bisection (commit 14385f4)
PINNED = [
    (0.25, 160, 3.0, 1e-4, None, 4.345947265625),
    (0.25, 160, None, 1e-4, None, 1.7310791015625),
    (0.01, 1000, 1.0, 1e-5, None, 1.51318359375),
    (0.05, 200, 1.5, 1e-3, GaussianCountMechanism(sigma=40.0, l2_sensitivity=4.0), 1.557373046875),
    (0.05, 200, None, 1e-3, GaussianCountMechanism(sigma=40.0, l2_sensitivity=4.0), 0.65850830078125),
    (0.5, 20, 8.0, 1e-6, DiscreteGaussianCountMechanism(scale=4.0, l2_sensitivity=1.0), 1.6512451171875),
]


@pytest.mark.parametrize(("q", "steps", "target", "delta", "prior", "expected"), PINNED)
def test_the_calibrated_noise_multiplier_is_unchanged(
    tmp_path: Path,
    q: float,
    steps: int,
    target: float | None,
    delta: float,
    prior: Mechanism | None,
    expected: float,
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", key=b"pin")
    try:
        ledger.ensure_budget("events", epsilon_cap=10.0, delta=delta, period_days=365)
        if prior is not None:
            ledger.reserve(
                scope="events",
                run_id="prior",
                mechanism=prior,
                data_window=WINDOW,
                n_users=1000,
                code_version="test",
                data_hash="sha256:test",
                purpose="dp_popularity",
            )
        noise = calibrate_noise_multiplier(
            ledger,
            scope="events",
            sample_rate=q,
            steps=steps,
            delta=delta,
            epsilon_target=target,
            at=AT,
            max_noise_multiplier=50.0,
        )
    finally:
        ledger.close()
    assert noise == expected
