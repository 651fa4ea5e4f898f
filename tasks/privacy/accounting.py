"""Privacy mechanisms and their composition with two independent Rényi-DP accountants.

Privacy unit: one user (all of a user's data in the data window).  Every epsilon produced here comes
with the delta it was converted at and the name of the accountant that produced it.

* The **ledger accountant** (:data:`LEDGER_ACCOUNTANT`) is Opacus' RDP analysis
  (``opacus.accountants.analysis.rdp``: the sampled Gaussian mechanism of DP-SGD, Mironov et al. 2019),
  the same code Opacus' ``RDPAccountant`` runs over its ``history`` of
  ``(noise_multiplier, sample_rate, steps)``; Gaussian count releases are its ``q = 1`` case,
  Laplace releases use Mironov (2017), Proposition 6, and OpenDP's discrete Gaussian count releases,
  which are rho-zCDP, have the RDP curve ``rho * alpha`` at every order ``alpha`` (Bun and Steinke
  2016, Definition 1.1).  RDP curves of all charges are added order by
  order (RDP composes additively) and converted to (epsilon, delta) once, with the conversion of
  Balle et al. (2020).  This is the tight RDP value, never a plain sum of epsilons.
* The **independent accountant** (:data:`INDEPENDENT_ACCOUNTANT`) is ``dp_accounting``'s
  ``RdpAccountant`` fed with ``DpEvent`` objects (a second implementation by a different team); the
  verifier recomputes every stored epsilon with it (discrete Gaussian releases as its ``ZCDpEvent``).

Both use the same RDP orders (:data:`RDP_ORDERS`), so they agree to floating-point tolerance.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np

LEDGER_ACCOUNTANT: Final = "opacus-rdp"
INDEPENDENT_ACCOUNTANT: Final = "dp_accounting-rdp"

# Integer orders only. At integer orders both accountants evaluate the subsampled Gaussian in closed
# form (a binomial sum), so they agree to rounding; at fractional orders each uses its own series, and
# dp_accounting's fails to converge for large sample rates (measured: q=0.5, sigma=1.006 dropped every
# order in (1, 2) and the two epsilons differed by 1.3e-3 relative). Integer orders give a valid, at
# most slightly larger epsilon; 128..1024 keep very small epsilons tight (Opacus' defaults stop at 63).
RDP_ORDERS: Final[tuple[float, ...]] = tuple([float(x) for x in range(2, 64)] + [128.0, 256.0, 512.0, 1024.0])

# Relative tolerance between the two accountants (tests/unit/test_privacy_accounting.py measures the
# actual differences).
ACCOUNTANT_RTOL: Final = 1e-3


@dataclass(frozen=True)
class DpSgdMechanism:
    """User-level DP-SGD: Poisson sampling of users at ``sample_rate``, ``steps`` noisy steps.

    ``clip_norm`` and ``cap_k`` (examples kept per user) bound one user's contribution; the privacy
    cost depends on ``noise_multiplier`` (noise std / clip norm), ``sample_rate`` and ``steps`` only.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    cap_k: int

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0 or not 0 < self.sample_rate <= 1 or self.steps < 1:
            raise ValueError(f"invalid DP-SGD mechanism {self}")


@dataclass(frozen=True)
class GaussianCountMechanism:
    """Counts released with Gaussian noise of std ``sigma``; one user changes them by ``l2_sensitivity``."""

    sigma: float
    l2_sensitivity: float
    releases: int = 1

    def __post_init__(self) -> None:
        if self.sigma <= 0 or self.l2_sensitivity <= 0 or self.releases < 1:
            raise ValueError(f"invalid Gaussian mechanism {self}")


@dataclass(frozen=True)
class LaplaceCountMechanism:
    """Counts released with Laplace noise of ``scale`` b; one user changes them by ``l1_sensitivity``."""

    scale: float
    l1_sensitivity: float
    releases: int = 1

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.l1_sensitivity <= 0 or self.releases < 1:
            raise ValueError(f"invalid Laplace mechanism {self}")


@dataclass(frozen=True)
class DiscreteGaussianCountMechanism:
    """Integer counts released with OpenDP's discrete Gaussian of ``scale`` (``dp.m.make_gaussian`` on
    a vector of integers); one user changes the count vector by at most ``l2_sensitivity`` in L2 norm.

    Each release is ``rho``-zCDP with ``rho = l2_sensitivity**2 / (2 * scale**2)`` (Canonne, Kamath
    and Steinke 2020, "The Discrete Gaussian for Differential Privacy"; the value OpenDP's
    ``meas.map(l2_sensitivity)`` returns); ``releases``
    independent releases compose to ``releases * rho`` (:attr:`rho`).
    """

    scale: float
    l2_sensitivity: float
    releases: int = 1

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.l2_sensitivity <= 0 or self.releases < 1:
            raise ValueError(f"invalid discrete Gaussian mechanism {self}")

    @property
    def rho_per_release(self) -> float:
        return self.l2_sensitivity**2 / (2.0 * self.scale**2)

    @property
    def rho(self) -> float:
        """zCDP parameter of all ``releases`` together (privacy unit: user)."""
        return self.releases * self.rho_per_release


Mechanism = DpSgdMechanism | GaussianCountMechanism | LaplaceCountMechanism | DiscreteGaussianCountMechanism

# Kinds stay readable forever: old ledgers hold gaussian_count / laplace_count charges.
_KINDS: Final[dict[str, type[Mechanism]]] = {
    "dp_sgd": DpSgdMechanism,
    "gaussian_count": GaussianCountMechanism,
    "laplace_count": LaplaceCountMechanism,
    "discrete_gaussian_count": DiscreteGaussianCountMechanism,
}


def mechanism_kind(mechanism: Mechanism) -> str:
    for kind, cls in _KINDS.items():
        if isinstance(mechanism, cls):
            return kind
    raise TypeError(f"not a privacy mechanism: {mechanism!r}")


def mechanism_params_json(mechanism: Mechanism) -> str:
    """Canonical JSON of a mechanism's parameters (sorted keys), as stored on the ledger."""
    return json.dumps(asdict(mechanism), sort_keys=True)


def mechanism_from_json(kind: str, params: str) -> Mechanism:
    if kind not in _KINDS:
        raise ValueError(f"unknown mechanism kind {kind!r}")
    values: dict[str, Any] = json.loads(params)
    return _KINDS[kind](**values)


# --- ledger accountant (Opacus RDP) ---------------------------------------------------------------


def _laplace_rdp(pure_epsilon: float, order: float) -> float:
    """RDP of the Laplace mechanism with pure-DP parameter 1/b (Mironov 2017, Proposition 6)."""
    a = order
    log_terms = np.logaddexp(
        math.log(a / (2 * a - 1)) + (a - 1) * pure_epsilon,
        math.log((a - 1) / (2 * a - 1)) - a * pure_epsilon,
    )
    return float(min(log_terms / (a - 1), pure_epsilon))


def sampled_gaussian_rdp(noise_multiplier: float, sample_rate: float, steps: int) -> np.ndarray:
    """RDP at :data:`RDP_ORDERS` of ``steps`` sampled Gaussian steps (Opacus' RDP analysis); a plain
    Gaussian release is ``sample_rate = 1``."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(
        compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(RDP_ORDERS)),
        dtype=np.float64,
    )


@lru_cache(maxsize=4096)
def rdp_curve(mechanism: Mechanism) -> np.ndarray:
    """RDP of one mechanism at :data:`RDP_ORDERS`, computed by Opacus' RDP analysis (cached; do not mutate)."""
    orders = list(RDP_ORDERS)
    if isinstance(mechanism, DpSgdMechanism):
        return sampled_gaussian_rdp(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)
    if isinstance(mechanism, GaussianCountMechanism):
        return sampled_gaussian_rdp(mechanism.sigma / mechanism.l2_sensitivity, 1.0, mechanism.releases)
    if isinstance(mechanism, DiscreteGaussianCountMechanism):
        # rho-zCDP is (alpha, rho * alpha)-RDP at every order alpha
        return mechanism.rho * np.asarray(orders, dtype=np.float64)
    pure = mechanism.l1_sensitivity / mechanism.scale
    return mechanism.releases * np.array([_laplace_rdp(pure, a) for a in orders], dtype=np.float64)


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """(epsilon, delta) from an RDP curve with Opacus' conversion (Balle et al. 2020)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():
        # An optimum at the edge of the order grid only makes the bound looser, never invalid.
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        epsilon, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return max(float(epsilon), 0.0)


def compose_epsilon(mechanisms: Iterable[Mechanism], delta: float) -> float:
    """Epsilon at ``delta`` (privacy unit: user) of all ``mechanisms`` together, ledger accountant."""
    total = np.zeros(len(RDP_ORDERS))
    for mechanism in mechanisms:
        total = total + rdp_curve(mechanism)
    return epsilon_from_rdp(total, delta)


def sampled_gaussians(history: Iterable[tuple[float, float, int]]) -> list[DpSgdMechanism]:
    """The mechanisms of sampled Gaussians given as (noise multiplier, sample rate, steps) triples (a
    plain Gaussian release is ``(sigma / sensitivity, 1.0, releases)``); clip norm and cap do not
    change their cost."""
    return [DpSgdMechanism(float(s), float(q), int(n), clip_norm=1.0, cap_k=1) for s, q, n in history]


def rdp_epsilon(history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """User-level epsilon at ``delta`` of sampled Gaussians given as (noise multiplier, sample rate,
    steps), the ledger accountant (the trainer reads Opacus' step history through this); a plain
    Gaussian release (DP popularity counts, say) is ``(sigma / sensitivity, 1.0, 1)``."""
    return compose_epsilon(sampled_gaussians(history), delta)


class NoNoiseFits(ValueError):
    """Not even the largest allowed noise multiplier keeps a DP-SGD run within the epsilon limit."""


def smallest_noise(
    epsilon_of: Callable[[float], float], limit: float, *, max_noise_multiplier: float = 1e5
) -> float:
    """THE noise bisection: the smallest noise multiplier (relative precision 1e-4) with
    ``epsilon_of(noise) <= limit``, for an ``epsilon_of`` that decreases as the noise grows. Raises
    :class:`NoNoiseFits` when not even ``max_noise_multiplier`` fits."""
    if epsilon_of(max_noise_multiplier) > limit:
        raise NoNoiseFits(
            f"no noise multiplier up to {max_noise_multiplier:g} keeps epsilon within {limit:.4g}"
        )
    low, high = 0.05, 0.5
    while epsilon_of(high) > limit:
        low, high = high, high * 2
    while high - low > 1e-4 * high:
        middle = (low + high) / 2
        if epsilon_of(middle) > limit:
            low = middle
        else:
            high = middle
    return min(high, max_noise_multiplier)


def calibrate_noise(
    limit: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    existing: Sequence[Mechanism] = (),
    max_noise_multiplier: float = 1e5,
) -> float:
    """THE noise calibration of DP-SGD (the ledger's for a run, the benchmarks' for theirs): the
    smallest noise multiplier (:func:`smallest_noise`) whose run of ``steps`` Poisson sampled steps at
    ``sample_rate``, composed with ``existing``, has epsilon at most ``limit`` at ``delta`` (ledger
    accountant, privacy unit user). Raises :class:`NoNoiseFits` when not even
    ``max_noise_multiplier`` fits."""

    def total(noise: float) -> float:
        return compose_epsilon([*existing, *sampled_gaussians([(noise, sample_rate, steps)])], delta)

    return smallest_noise(total, limit, max_noise_multiplier=max_noise_multiplier)


def naive_sum_epsilon(mechanisms: Sequence[Mechanism], delta: float) -> float:
    """Sum of each mechanism's own epsilon at ``delta`` (for comparison only: not a valid accounting)."""
    return sum(compose_epsilon([m], delta) for m in mechanisms)


# --- independent accountant (dp_accounting RDP) ---------------------------------------------------


def dp_event(mechanism: Mechanism) -> Any:
    """The ``dp_accounting`` DpEvent of a mechanism."""
    import dp_accounting

    if isinstance(mechanism, DpSgdMechanism):
        step = dp_accounting.PoissonSampledDpEvent(
            mechanism.sample_rate, dp_accounting.GaussianDpEvent(mechanism.noise_multiplier)
        )
        return dp_accounting.SelfComposedDpEvent(step, mechanism.steps)
    if isinstance(mechanism, GaussianCountMechanism):
        single = dp_accounting.GaussianDpEvent(mechanism.sigma / mechanism.l2_sensitivity)
        return dp_accounting.SelfComposedDpEvent(single, mechanism.releases)
    if isinstance(mechanism, DiscreteGaussianCountMechanism):
        zcdp = dp_accounting.ZCDpEvent(rho=mechanism.rho_per_release)
        return dp_accounting.SelfComposedDpEvent(zcdp, mechanism.releases)
    laplace = dp_accounting.LaplaceDpEvent(mechanism.scale / mechanism.l1_sensitivity)
    return dp_accounting.SelfComposedDpEvent(laplace, mechanism.releases)


def independent_epsilon(mechanisms: Iterable[Mechanism], delta: float) -> float:
    """Epsilon at ``delta`` of all ``mechanisms`` together, recomputed by ``dp_accounting``."""
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=list(RDP_ORDERS))
    for mechanism in mechanisms:
        accountant.compose(dp_event(mechanism))
    return max(float(accountant.get_epsilon(delta)), 0.0)


def epsilons_agree(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=ACCOUNTANT_RTOL, abs_tol=1e-9)
