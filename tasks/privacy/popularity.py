"""User-level differentially private item popularity (optionally per country), released with OpenDP.

Each user contributes 1 to at most ``cap_per_user`` distinct keys (item, or country and item), so one
user changes the vector of integer counts by at most ``sqrt(cap_per_user)`` in L2 norm.  OpenDP's
discrete Gaussian (``dp.m.make_gaussian`` on a vector of integers: exact arithmetic, no floating-point
attack surface) adds noise of scale ``sigma``; that is the rho-zCDP
:class:`~tasks.privacy.accounting.DiscreteGaussianCountMechanism` of :func:`popularity_mechanism`,
which the caller reserves on the ledger before releasing.

Noise is never derived from a seed: OpenDP's samplers draw their random bits from OpenSSL's
``RAND_bytes`` (a CSPRNG seeded by the operating system; OpenSSL is linked into OpenDP's library), so
two releases of the same data differ and nobody can recompute the noise of a release.

The released domain must be public: pass the catalog's ``item_ids`` (and ``countries``).  Without them
the domain is the keys present in ``events``, which reveals which items someone interacted with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd

from tasks.privacy.accounting import DiscreteGaussianCountMechanism

if TYPE_CHECKING:
    from opendp.mod import Measurement

UNKNOWN_COUNTRY = "unknown"
NOISE_SOURCE: Final = "OpenDP discrete Gaussian (dp.m.make_gaussian, integer counts, OpenSSL CSPRNG)"


def popularity_mechanism(sigma: float, cap_per_user: int) -> DiscreteGaussianCountMechanism:
    """The mechanism :func:`release_dp_popularity` runs (one release, L2 sensitivity sqrt(cap))."""
    return DiscreteGaussianCountMechanism(scale=sigma, l2_sensitivity=math.sqrt(cap_per_user), releases=1)


class ReleaseWindow:
    """The data window of a DP release policy: events of ``event_types`` in the ``days`` before the
    release time (the popularity and the co-occurrence releases share it)."""

    days: int
    event_types: tuple[str, ...]

    def start(self, end: pd.Timestamp) -> pd.Timestamp:
        """First instant of the data window ``[start, end)`` of a release at ``end``."""
        return end - pd.Timedelta(days=self.days)

    def window(self, events: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
        return events[
            events["event_type"].isin(list(self.event_types))
            & (events["event_timestamp"] >= self.start(end))
            & (events["event_timestamp"] < end)
        ]


@dataclass(frozen=True)
class PopularityRelease(ReleaseWindow):
    """One DP popularity release: distinct users per item (or country and item) with an event of
    ``event_types`` in the ``days`` before the release time, at most ``cap_per_user`` keys per user,
    OpenDP's discrete Gaussian of scale ``noise_multiplier * sqrt(cap_per_user)`` (privacy unit: user).

    Every DP count release of the project is one of these: :meth:`mechanism` is what the caller
    reserves on the ledger (``releases`` of them under one charge), :meth:`release` what it runs.
    """

    noise_multiplier: float  # sigma / L2 sensitivity
    cap_per_user: int
    days: int
    event_types: tuple[str, ...]
    by_country: bool = False

    @property
    def sigma(self) -> float:
        return self.noise_multiplier * math.sqrt(self.cap_per_user)

    def mechanism(self, releases: int = 1) -> DiscreteGaussianCountMechanism:
        return replace(popularity_mechanism(self.sigma, self.cap_per_user), releases=releases)

    def release(
        self,
        events: pd.DataFrame,
        end: pd.Timestamp,
        *,
        item_ids: Sequence[str],
        countries: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """:func:`release_dp_popularity` of the window before ``end`` over the public ``item_ids``."""
        return release_dp_popularity(
            self.window(events, end),
            sigma=self.sigma,
            cap_per_user=self.cap_per_user,
            by_country=self.by_country,
            item_ids=item_ids,
            countries=countries,
        )


def discrete_gaussian(sigma: float, l2_sensitivity: float) -> Measurement:
    """OpenDP's discrete Gaussian measurement on integer vectors (``meas.map(l2_sensitivity)`` is rho)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T=float)
    measurement = dp.m.make_gaussian(*space, scale=float(sigma))
    # the ledger charges what OpenDP runs: its own privacy map must agree with the mechanism's rho
    charged = DiscreteGaussianCountMechanism(scale=sigma, l2_sensitivity=l2_sensitivity).rho
    opendp_rho = measurement.map(float(l2_sensitivity))
    if not math.isclose(opendp_rho, charged, rel_tol=1e-9):
        raise RuntimeError(f"OpenDP's rho {opendp_rho} differs from the charged rho {charged}")
    return measurement


def noisy_counts(exact: np.ndarray, sigma: float, l2_sensitivity: float) -> np.ndarray:
    """THE DP count release of the project: ``exact`` integer counts (any shape; one user changes them
    by at most ``l2_sensitivity`` in L2 norm) plus OpenDP's discrete Gaussian of scale ``sigma``, fresh
    CSPRNG bits every call (:data:`NOISE_SOURCE`). int64, same shape, not clipped. The caller reserves
    ``DiscreteGaussianCountMechanism(sigma, l2_sensitivity)`` on the ledger before calling."""
    values = np.asarray(exact)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"counts must be integers, got {values.dtype}")
    measurement = discrete_gaussian(sigma, l2_sensitivity)
    noisy = measurement([int(c) for c in values.ravel()])
    return np.asarray(noisy, dtype=np.int64).reshape(values.shape)


def capped_pairs(frame: pd.DataFrame, keys: Sequence[str], cap_per_user: int) -> pd.DataFrame:
    """At most ``cap_per_user`` distinct ``keys`` per user, a uniformly random subset of the user's own.

    Each pair gets an independent uniform priority and a user keeps their ``cap_per_user`` lowest:
    a user's subset depends on that user's pairs only, so adding or removing one user changes no
    other user's subset, whatever the draws (the sensitivity bound needs no secret randomness).  The
    draws come from numpy's PCG64 seeded from OS entropy, so they are not reproducible from
    configuration either.
    """
    # the user is their id as text, for the cap as for every count keyed by it (an object column may
    # spell one id as 5 and "5"); rows without a user count for nobody
    pairs = frame.loc[frame["user_id"].notna(), ["user_id", *keys]].astype({"user_id": str})
    pairs = pairs.drop_duplicates()
    priority = np.random.default_rng().random(len(pairs))
    order = np.lexsort((priority, pairs["user_id"].to_numpy()))
    pairs = pairs.iloc[order]
    return pairs[pairs.groupby("user_id", sort=False).cumcount() < cap_per_user]


def release_dp_popularity(
    events: pd.DataFrame,
    *,
    sigma: float,
    cap_per_user: int,
    by_country: bool,
    item_ids: Sequence[str] | None = None,
    countries: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Noisy distinct-user counts per item (and country), clipped at 0, sorted by count.

    Columns: ``item_id`` (``country`` first when ``by_country``) and ``noisy_count`` (a float column
    holding integers >= 0).  Noise: OpenDP's discrete Gaussian of scale ``sigma``, fresh CSPRNG bits
    every call (:data:`NOISE_SOURCE`); the cost is :func:`popularity_mechanism` (rho-zCDP, user level).
    """
    if cap_per_user < 1 or sigma <= 0:
        raise ValueError(f"cap_per_user must be >= 1 and sigma > 0, got {cap_per_user}, {sigma}")
    keys = ["country", "item_id"] if by_country else ["item_id"]
    frame = events[["user_id", *keys]].copy()
    if by_country:
        frame["country"] = frame["country"].fillna(UNKNOWN_COUNTRY).astype(str)
    kept = capped_pairs(frame, keys, cap_per_user)
    counts = kept.groupby(keys).size()

    items = sorted(item_ids) if item_ids is not None else sorted(frame["item_id"].unique())
    if by_country:
        country_list = sorted(countries) if countries is not None else sorted(frame["country"].unique())
        domain = pd.MultiIndex.from_product([country_list, items], names=keys)
    else:
        domain = pd.Index(items, name="item_id")
    exact = counts.reindex(domain, fill_value=0).to_numpy(dtype=np.int64)
    noisy = noisy_counts(exact, sigma, math.sqrt(cap_per_user))
    result = pd.DataFrame({"noisy_count": np.clip(noisy, 0, None).astype(np.float64)}, index=domain)
    return result.reset_index().sort_values(
        ["noisy_count", *keys], ascending=[False, *[True] * len(keys)], ignore_index=True
    )
