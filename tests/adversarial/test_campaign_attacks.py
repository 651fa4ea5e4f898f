"""Attacks on the user-level DP release of off-policy estimates (issue #18, ``tasks/campaigns``).

The release (``tasks.campaigns.release``) claims: adding or removing one user changes its fixed-point
vector by at most ``UNIT * sqrt(2 * quantities + 1)`` in L2 norm, the sensitivity its discrete
Gaussian noise is calibrated to.  Each test below is one user who, on the code before the fix, moved
the vector by far more than that:

- a user whose per-decision term is not a number (a propensity so small that ``1 / p`` overflows,
  times a zero reward): ``rint(nan)`` cast to int64 is -2**63, which no noise hides.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.campaigns import release

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
