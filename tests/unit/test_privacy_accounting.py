"""Composition of privacy charges: ledger accountant (Opacus RDP) against dp_accounting."""

from __future__ import annotations

import math

import pytest

from tasks.privacy.accounting import (
    ACCOUNTANT_RTOL,
    RDP_ORDERS,
    DiscreteGaussianCountMechanism,
    DpSgdMechanism,
    GaussianCountMechanism,
    LaplaceCountMechanism,
    compose_epsilon,
    dp_event,
    independent_epsilon,
    mechanism_from_json,
    mechanism_kind,
    mechanism_params_json,
    naive_sum_epsilon,
    rdp_curve,
)

DELTA = 1e-5
RUNS = [
    DpSgdMechanism(noise_multiplier=1.1, sample_rate=0.01, steps=1000, clip_norm=1.0, cap_k=20),
    DpSgdMechanism(noise_multiplier=0.9, sample_rate=0.02, steps=500, clip_norm=1.0, cap_k=20),
    DpSgdMechanism(noise_multiplier=1.5, sample_rate=0.05, steps=300, clip_norm=2.0, cap_k=10),
    DpSgdMechanism(noise_multiplier=1.1, sample_rate=0.01, steps=1000, clip_norm=1.0, cap_k=20),
    GaussianCountMechanism(sigma=20.0, l2_sensitivity=math.sqrt(20)),
    LaplaceCountMechanism(scale=10.0, l1_sensitivity=3.0, releases=2),
]


def test_composition_of_several_runs_equals_independent_accountant() -> None:
    ledger = compose_epsilon(RUNS, DELTA)
    independent = independent_epsilon(RUNS, DELTA)
    assert ledger == pytest.approx(independent, rel=ACCOUNTANT_RTOL)


@pytest.mark.parametrize("mechanism", RUNS[1:3] + RUNS[4:], ids=["sgd-a", "sgd-b", "gaussian", "laplace"])
def test_single_mechanism_epsilon_equals_independent_accountant(mechanism: DpSgdMechanism) -> None:
    assert compose_epsilon([mechanism], DELTA) == pytest.approx(
        independent_epsilon([mechanism], DELTA), rel=ACCOUNTANT_RTOL
    )


def test_accountants_agree_at_a_large_sample_rate() -> None:
    """A small shop (q = 0.5): dp_accounting's fractional-order series did not converge here and the two
    epsilons differed by 1.3e-3 relative (the production end-to-end run's ledger failed verification)."""
    mechanisms = [
        DpSgdMechanism(noise_multiplier=1.005798, sample_rate=0.5, steps=10, clip_norm=1.0, cap_k=20),
        GaussianCountMechanism(sigma=4.0 * math.sqrt(50), l2_sensitivity=math.sqrt(50)),
    ]
    delta = 3.46e-4
    assert compose_epsilon(mechanisms, delta) == pytest.approx(
        independent_epsilon(mechanisms, delta), rel=1e-6
    )


def test_composition_is_far_below_the_naive_sum() -> None:
    composed = compose_epsilon(RUNS, DELTA)
    naive = naive_sum_epsilon(RUNS, DELTA)
    assert composed < 0.6 * naive  # measured: 5.7 vs 10.2


def test_composition_is_above_each_single_run() -> None:
    assert compose_epsilon(RUNS, DELTA) > max(compose_epsilon([m], DELTA) for m in RUNS)


def test_ledger_epsilon_is_never_below_the_tight_pld_value() -> None:
    from dp_accounting.pld import PLDAccountant

    runs = [DpSgdMechanism(1.0, 0.02, 200, 1.0, 5)] * 3
    pld = PLDAccountant(value_discretization_interval=1e-3)
    for run in runs:
        pld.compose(dp_event(run))
    assert compose_epsilon(runs, DELTA) >= pld.get_epsilon(DELTA)


def test_single_laplace_release_costs_about_its_pure_dp_epsilon() -> None:
    """RDP at finitely many orders is an upper bound: 0.503 for the exact 0.5-DP Laplace release."""
    mechanism = LaplaceCountMechanism(scale=2.0, l1_sensitivity=1.0)
    assert 0.45 <= compose_epsilon([mechanism], DELTA) <= 0.51


def test_no_mechanism_costs_nothing() -> None:
    assert compose_epsilon([], DELTA) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("mechanism", RUNS, ids=lambda m: type(m).__name__)
def test_mechanism_round_trips_through_its_stored_json(mechanism: DpSgdMechanism) -> None:
    kind = mechanism_kind(mechanism)
    assert mechanism_from_json(kind, mechanism_params_json(mechanism)) == mechanism


def test_invalid_dp_sgd_mechanism_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid DP-SGD"):
        DpSgdMechanism(noise_multiplier=1.0, sample_rate=1.5, steps=10, clip_norm=1.0, cap_k=1)


# --- OpenDP discrete Gaussian count releases (rho-zCDP) -------------------------------------------------
POPULARITY = DiscreteGaussianCountMechanism(
    scale=4.0 * math.sqrt(50), l2_sensitivity=math.sqrt(50), releases=3
)


def test_discrete_gaussian_rho_composes_over_its_releases() -> None:
    assert POPULARITY.rho_per_release == pytest.approx(1 / 32)  # 1 / (2 * noise multiplier 4 ** 2)
    assert POPULARITY.rho == pytest.approx(3 / 32)


def test_discrete_gaussian_rdp_curve_is_rho_times_the_order() -> None:
    curve = rdp_curve(POPULARITY)
    assert curve == pytest.approx([POPULARITY.rho * a for a in RDP_ORDERS], rel=1e-12)
    # the same curve as three continuous Gaussian releases of the same noise multiplier (q = 1)
    gaussian = GaussianCountMechanism(
        sigma=POPULARITY.scale, l2_sensitivity=POPULARITY.l2_sensitivity, releases=3
    )
    assert curve == pytest.approx(rdp_curve(gaussian), rel=1e-9)


def test_discrete_gaussian_is_recomputed_by_dp_accountings_zcdp_event() -> None:
    import dp_accounting

    event = dp_event(POPULARITY)
    assert event == dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(rho=1 / 32), 3)
    mechanisms = [RUNS[0], POPULARITY]
    assert compose_epsilon(mechanisms, DELTA) == pytest.approx(
        independent_epsilon(mechanisms, DELTA), rel=ACCOUNTANT_RTOL
    )
    alone = compose_epsilon([POPULARITY], DELTA)
    assert alone == pytest.approx(independent_epsilon([POPULARITY], DELTA), rel=1e-9)
    # the RDP conversion is at least as tight as zCDP's rho + 2 sqrt(rho log(1/delta)) (Bun-Steinke)
    assert 0 < alone <= POPULARITY.rho + 2 * math.sqrt(POPULARITY.rho * math.log(1 / DELTA))


def test_discrete_gaussian_round_trips_and_old_kinds_stay_readable() -> None:
    kind = mechanism_kind(POPULARITY)
    assert kind == "discrete_gaussian_count"
    assert mechanism_from_json(kind, mechanism_params_json(POPULARITY)) == POPULARITY
    # rows written by earlier versions of the ledger
    assert mechanism_from_json(
        "gaussian_count", '{"l2_sensitivity": 7.0710678118654755, "releases": 3, "sigma": 28.284271247461902}'
    ) == GaussianCountMechanism(28.284271247461902, 7.0710678118654755, 3)
    assert mechanism_from_json(
        "laplace_count", '{"l1_sensitivity": 3.0, "releases": 2, "scale": 10.0}'
    ) == LaplaceCountMechanism(10.0, 3.0, 2)


def test_invalid_discrete_gaussian_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid discrete Gaussian"):
        DiscreteGaussianCountMechanism(scale=0.0, l2_sensitivity=1.0)
