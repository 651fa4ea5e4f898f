"""User-level differentially private item popularity (optionally per country).

Each user contributes 1 to at most ``cap_per_user`` distinct keys (item, or country and item), so one
user changes the vector of counts by at most ``sqrt(cap_per_user)`` in L2 norm; Gaussian noise of std
``sigma`` then gives the :class:`~tasks.privacy.accounting.GaussianCountMechanism` of
:func:`popularity_mechanism`, which the caller reserves on the ledger before releasing.

The released domain must be public: pass the catalog's ``item_ids`` (and ``countries``).  Without them
the domain is the keys present in ``events``, which reveals which items someone interacted with.
Noise comes from numpy's PCG64 seeded by ``rng_seed`` (reproducible, not a cryptographically secure RNG).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tasks.privacy.accounting import GaussianCountMechanism

UNKNOWN_COUNTRY = "unknown"


def popularity_mechanism(sigma: float, cap_per_user: int) -> GaussianCountMechanism:
    """The mechanism :func:`release_dp_popularity` runs (one release, L2 sensitivity sqrt(cap))."""
    return GaussianCountMechanism(sigma=sigma, l2_sensitivity=math.sqrt(cap_per_user), releases=1)


def release_dp_popularity(
    events: pd.DataFrame,
    *,
    sigma: float,
    cap_per_user: int,
    rng_seed: int,
    by_country: bool,
    item_ids: Sequence[str] | None = None,
    countries: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Noisy distinct-user counts per item (and country), clipped at 0, sorted by count.

    Columns: ``item_id`` (``country`` first when ``by_country``) and ``noisy_count`` (float >= 0).
    """
    if cap_per_user < 1 or sigma <= 0:
        raise ValueError(f"cap_per_user must be >= 1 and sigma > 0, got {cap_per_user}, {sigma}")
    keys = ["country", "item_id"] if by_country else ["item_id"]
    frame = events[["user_id", *keys]].copy()
    if by_country:
        frame["country"] = frame["country"].fillna(UNKNOWN_COUNTRY).astype(str)
    pairs = frame.drop_duplicates()
    rng = np.random.default_rng(rng_seed)
    # a random subset of at most cap_per_user distinct keys per user
    pairs = pairs.iloc[rng.permutation(len(pairs))]
    kept = pairs[pairs.groupby("user_id").cumcount() < cap_per_user]
    counts = kept.groupby(keys).size()

    items = sorted(item_ids) if item_ids is not None else sorted(frame["item_id"].unique())
    if by_country:
        country_list = sorted(countries) if countries is not None else sorted(frame["country"].unique())
        domain = pd.MultiIndex.from_product([country_list, items], names=keys)
    else:
        domain = pd.Index(items, name="item_id")
    exact = counts.reindex(domain, fill_value=0).to_numpy(dtype=np.float64)
    noisy = np.clip(exact + rng.normal(0.0, sigma, size=len(exact)), 0.0, None)
    result = pd.DataFrame({"noisy_count": noisy}, index=domain).reset_index()
    return result.sort_values(
        ["noisy_count", *keys], ascending=[False, *[True] * len(keys)], ignore_index=True
    )
