"""The loss-threshold membership-inference audit on synthetic loss distributions."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.config import Settings
from tasks.privacy.audit import (
    LOWER_BOUND_NOTE,
    audit_pending,
    load_audits,
    loss_threshold_audit,
    membership_auc,
    write_membership_losses,
)

DELTA = 1e-5


def test_same_loss_distribution_gives_auc_near_half_and_no_bound() -> None:
    rng = np.random.default_rng(0)
    result = loss_threshold_audit(rng.gamma(2.0, 1.0, 1000), rng.gamma(2.0, 1.0, 1000), DELTA)
    assert abs(result.auc - 0.5) < 0.04
    assert result.eps_lower_bound == pytest.approx(0.0, abs=1e-12)


def test_memorised_members_give_high_auc_and_positive_bound() -> None:
    rng = np.random.default_rng(1)
    result = loss_threshold_audit(rng.gamma(2.0, 0.3, 1000), rng.gamma(2.0, 1.0, 1000), DELTA)
    assert result.auc > 0.85
    assert result.eps_lower_bound > 1.5


def test_lower_bound_stays_below_the_true_epsilon_of_a_laplace_mechanism() -> None:
    """Scores of an exactly 2-DP mechanism (Laplace, sensitivity 1, scale 0.5) cannot prove more than 2."""
    rng = np.random.default_rng(2)
    members = -(1.0 + rng.laplace(0.0, 0.5, 5000))
    nonmembers = -rng.laplace(0.0, 0.5, 5000)
    result = loss_threshold_audit(members, nonmembers, DELTA)
    assert 0.5 < result.eps_lower_bound <= 2.0


def test_auc_counts_ties_as_half() -> None:
    assert membership_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert membership_auc(np.array([0.0]), np.array([1.0])) == pytest.approx(1.0)


def test_result_states_that_the_empirical_bound_is_a_lower_bound() -> None:
    result = loss_threshold_audit([0.1, 0.2], [0.3, 0.4], DELTA)
    assert result.note == LOWER_BOUND_NOTE
    assert "lower bound" in result.note
    assert "guarantee" in result.note


def test_audit_without_members_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        loss_threshold_audit([], [0.3], DELTA)


def test_pending_model_versions_are_audited_once(shoprec_home: Settings) -> None:
    rng = np.random.default_rng(3)
    write_membership_losses(shoprec_home, "7", rng.gamma(2, 0.3, 200), rng.gamma(2, 1.0, 200), delta=DELTA)
    assert audit_pending(shoprec_home) == ["7"]
    assert audit_pending(shoprec_home) == []
    stored = load_audits(shoprec_home)["7"]
    assert (stored.n_members, stored.n_nonmembers, stored.delta) == (200, 200, DELTA)
    assert stored.auc > 0.8
