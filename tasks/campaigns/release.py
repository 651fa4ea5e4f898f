"""Differentially private release of off-policy estimates computed from real users' logs.

Privacy unit: one user.  An estimate leaves the trust boundary only through this module.  Each
released quantity is the mean over users of the user's own mean per-decision term (IPS or DR terms,
:func:`tasks.campaigns.ope.terms`, or a difference of two policies' terms), clipped to
``[-clip, clip]``: the value per customer, each customer weighing once.  For every quantity the
release holds the clipped sum and the clipped sum of squares (for the interval), and one user count,
all as fixed-point integers bounded by :data:`UNIT` per user and coordinate, so adding or removing a
user changes the vector by at most ``UNIT * sqrt(2 * quantities + 1)`` in L2 norm.  OpenDP's discrete
Gaussian adds the noise (:func:`tasks.privacy.popularity.discrete_gaussian`: exact integer arithmetic,
OpenSSL CSPRNG, no seed); the cost is a rho-zCDP
:class:`~tasks.privacy.accounting.DiscreteGaussianCountMechanism`, reserved on the privacy ledger by
:func:`release_charged` before the noise is drawn and committed with the file that holds the release.

The interval of a released mean adds the noise's variance to the sampling variance computed from the
noisy sums (normal approximation; the delta method for the noisy count).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Final

import numpy as np

from tasks.campaigns.contracts import run_folder
from tasks.config import Settings
from tasks.io import atomic_write_json
from tasks.permissions import private_dir
from tasks.privacy.accounting import LEDGER_ACCOUNTANT, DiscreteGaussianCountMechanism, compose_epsilon
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.policy import budget_for_run, require_delta_within_users
from tasks.privacy.popularity import discrete_gaussian

PURPOSE: Final = "offer_ope_release"
UNIT: Final = 1000  # fixed-point units one user may add to any coordinate
NOISE_SOURCE: Final = "OpenDP discrete Gaussian (dp.m.make_gaussian on fixed-point integers, OpenSSL CSPRNG)"


@dataclass(frozen=True)
class ReleasedEstimate:
    """A DP mean per customer of ``name`` with its interval, and the guarantee of the whole release."""

    name: str
    value: float
    std_error: float
    low: float
    high: float
    level: float
    epsilon: float
    delta: float
    accountant: str
    unit: str = "user"


def release_mechanism(n_quantities: int, noise_multiplier: float) -> DiscreteGaussianCountMechanism:
    """The mechanism releasing ``n_quantities`` (sum and sum of squares each, plus the user count)."""
    l2 = UNIT * math.sqrt(2 * n_quantities + 1)
    return DiscreteGaussianCountMechanism(scale=noise_multiplier * l2, l2_sensitivity=l2, releases=1)


def noise_for_epsilon(n_quantities: int, epsilon: float, delta: float) -> float:
    """Smallest noise multiplier (scale / L2 sensitivity) whose release costs at most ``epsilon`` at
    ``delta`` (ledger accountant; the cost does not depend on ``n_quantities``)."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, not {epsilon}")
    low, high = 0.01, 1.0
    while compose_epsilon([release_mechanism(n_quantities, high)], delta) > epsilon:
        low, high = high, high * 2
    while high - low > 1e-4 * high:
        middle = (low + high) / 2
        if compose_epsilon([release_mechanism(n_quantities, middle)], delta) > epsilon:
            low = middle
        else:
            high = middle
    return high


def fixed_point_vector(user_ids: np.ndarray, terms: Mapping[str, np.ndarray], clip: float) -> list[int]:
    """[sum_q, sumsq_q for each quantity q (in order)] + [user count], each user adding at most UNIT."""
    if clip <= 0:
        raise ValueError(f"clip must be > 0, not {clip}")
    users, index = np.unique(np.asarray(user_ids).astype(str), return_inverse=True)
    counts = np.bincount(index, minlength=len(users)).astype(float)
    vector: list[int] = []
    for name, values in terms.items():
        if values.shape != (len(index),):
            raise ValueError(f"terms of {name!r} have shape {values.shape}, not ({len(index)},)")
        with np.errstate(invalid="ignore", over="ignore"):
            means = np.bincount(index, weights=values, minlength=len(users)) / counts
        # a user whose terms are not numbers (inf - inf, 0 * inf) counts as 0: never as rint(nan) cast to
        # int64 (-2**63), which would move the vector by far more than UNIT
        means = np.clip(np.nan_to_num(means, nan=0.0, posinf=clip, neginf=-clip), -clip, clip)
        vector.append(int(np.rint(means * UNIT / clip).astype(np.int64).sum()))
        vector.append(int(np.rint(means**2 * UNIT / clip**2).astype(np.int64).sum()))
    vector.append(UNIT * len(users))
    return vector


def decode(
    names: list[str],
    noisy: list[int],
    *,
    clip: float,
    scale: float,
    level: float,
    epsilon: float,
    delta: float,
) -> list[ReleasedEstimate]:
    """Means per user and intervals from a noisy fixed-point vector (see the module's docstring)."""
    n_users = max(noisy[-1] / UNIT, 1.0)
    noise_sd = scale / UNIT  # one coordinate's noise, in users (count) or clip units (sums)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out = []
    for k, name in enumerate(names):
        mean = noisy[2 * k] * clip / UNIT / n_users
        mean_sq = noisy[2 * k + 1] * clip**2 / UNIT / n_users
        sampling_var = max(mean_sq - mean**2, 0.0) / n_users
        noise_var = (noise_sd * clip / n_users) ** 2 + (mean * noise_sd / n_users) ** 2
        se = math.sqrt(sampling_var + noise_var)
        out.append(
            ReleasedEstimate(
                name, mean, se, mean - z * se, mean + z * se, level, epsilon, delta, LEDGER_ACCOUNTANT
            )
        )
    return out


def release_means(
    user_ids: np.ndarray,
    terms: Mapping[str, np.ndarray],
    *,
    clip: float,
    noise_multiplier: float,
    epsilon: float,
    delta: float,
    level: float = 0.95,
) -> list[ReleasedEstimate]:
    """Draw the release (fresh CSPRNG noise every call): the caller has reserved
    :func:`release_mechanism` on the ledger, whose epsilon at delta it passes for the report."""

    mechanism = release_mechanism(len(terms), noise_multiplier)
    exact = fixed_point_vector(user_ids, terms, clip)
    noisy = [int(x) for x in discrete_gaussian(mechanism.scale, mechanism.l2_sensitivity)(exact)]
    return decode(
        list(terms), noisy, clip=clip, scale=mechanism.scale, level=level, epsilon=epsilon, delta=delta
    )


def charged_draw(
    settings: Settings,
    *,
    run_key: str,
    purpose: str,
    mechanism_at: Callable[[float], DiscreteGaussianCountMechanism],
    n_users: int,
    data_window: tuple[dt.datetime, dt.datetime],
    data_hash: str,
    code_version: str,
    draw: Callable[[DiscreteGaussianCountMechanism, float, float], Any],
) -> Any:
    """Reserve ``mechanism_at(delta)`` on the ledger (the scope's delta) under ``purpose``, call
    ``draw(mechanism, epsilon, delta)`` once, store its JSON result in the run's folder and commit the
    charge with that file; a retried attempt reads the file back instead of drawing again under the
    same charge."""

    folder = run_folder(settings, run_key)
    ledger = open_ledger(settings)
    try:
        delta = budget_for_run(ledger, settings, n_users=n_users).delta
        require_delta_within_users(delta, n_users, purpose=purpose)
        charge = ledger.reserve(
            scope=settings.privacy_scope,
            run_id=run_key,
            mechanism=mechanism_at(delta),
            data_window=data_window,
            n_users=n_users,
            code_version=code_version,
            data_hash=data_hash,
            purpose=purpose,
        )
        path = folder / f"{purpose}-charge{int(charge.id)}.json"
        if path.exists():
            return json.loads(path.read_text())
        mechanism = charge.mechanism
        assert isinstance(mechanism, DiscreteGaussianCountMechanism)
        result = draw(mechanism, float(charge.epsilon), float(charge.delta))
        private_dir(folder)
        atomic_write_json(path, result, private=True, indent=None)
        if str(charge.status) == "reserved":
            ledger.commit(int(charge.id), model_version=None, artifact_uri=str(path))
    finally:
        ledger.close()
    return result


def release_charged(
    settings: Settings,
    *,
    run_key: str,
    user_ids: np.ndarray,
    terms: Mapping[str, np.ndarray],
    clip: float,
    epsilon: float,
    data_window: tuple[dt.datetime, dt.datetime],
    data_hash: str,
    code_version: str = "unknown",
) -> list[ReleasedEstimate]:
    """The release of ``terms`` at ``epsilon`` through :func:`charged_draw` (purpose :data:`PURPOSE`)."""
    n_users = len(np.unique(np.asarray(user_ids).astype(str)))

    def mechanism_at(delta: float) -> DiscreteGaussianCountMechanism:
        return release_mechanism(len(terms), noise_for_epsilon(len(terms), epsilon, delta))

    def draw(mechanism: DiscreteGaussianCountMechanism, spent: float, delta: float) -> list[dict[str, Any]]:
        released = release_means(
            user_ids,
            terms,
            clip=clip,
            noise_multiplier=mechanism.scale / mechanism.l2_sensitivity,
            epsilon=spent,
            delta=delta,
        )
        return [asdict(r) for r in released]

    rows = charged_draw(
        settings,
        run_key=run_key,
        purpose=PURPOSE,
        mechanism_at=mechanism_at,
        n_users=n_users,
        data_window=data_window,
        data_hash=data_hash,
        code_version=code_version,
        draw=draw,
    )
    return [ReleasedEstimate(**row) for row in rows]
