"""User-level differentially private item-item co-occurrence counts, and item vectors made from them.

What is released: for every unordered pair of items ``{i, j}`` of a public domain (``i == j``
included), the number of users who interacted with both, where each user counts with at most
``cap_per_user`` distinct items, a uniformly random subset of their own
(:func:`tasks.privacy.popularity.capped_pairs`, drawn from OS entropy).  One user therefore adds 1 to
at most ``k (k - 1) / 2`` pair counts and ``k`` item counts (the diagonal), so adding or removing
one user changes the released vector of ``n (n + 1) / 2`` integers by at most
``sqrt(k (k + 1) / 2)`` in L2 norm (:func:`cooccurrence_sensitivity`, ``k = cap_per_user``).

The counts are released with the project's one DP count helper,
:func:`tasks.privacy.popularity.noisy_counts` (OpenDP's discrete Gaussian on a vector of
integers, OpenSSL's CSPRNG, never a configured seed), of scale ``noise_multiplier *
sqrt(k (k + 1) / 2)``: ``rho = 1 / (2 noise_multiplier^2)`` zCDP per release, privacy unit user,
which the caller reserves on the ledger as a ``discrete_gaussian_count`` charge
(:meth:`CooccurrenceRelease.mechanism`) before releasing.

:func:`behaviour_vectors` turns one release into an ``[n_items, dim]`` matrix of item vectors
(positive PMI of the noisy counts, truncated eigendecomposition).  It reads nothing but the release,
so it is post-processing and costs no privacy.

The domain must be public: the catalog's item ids, or a subset chosen from public or already
released data (the top items of a DP popularity release).  Without it the domain would reveal which
items someone interacted with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from tasks.privacy.accounting import DiscreteGaussianCountMechanism
from tasks.privacy.popularity import ReleaseWindow, capped_pairs, noisy_counts

# PMI with a smoothed context distribution (Levy, Goldberg and Dagan 2015): counts ** 0.75
CONTEXT_SMOOTHING: Final = 0.75


def cooccurrence_sensitivity(cap_per_user: int) -> float:
    """L2 norm by which one user can change the released counts: ``sqrt(k (k + 1) / 2)``
    (``k (k - 1) / 2`` pairs and ``k`` items, each by 1)."""
    if cap_per_user < 1:
        raise ValueError(f"cap_per_user must be >= 1, got {cap_per_user}")
    return math.sqrt(cap_per_user * (cap_per_user + 1) / 2)


@dataclass(frozen=True)
class CooccurrenceCounts:
    """One DP co-occurrence release: ``counts[t]`` is the noisy count of the pair
    ``(rows[t], cols[t])`` of :func:`pair_index` over ``item_ids`` (integers, may be negative)."""

    item_ids: tuple[str, ...]
    counts: np.ndarray  # int64 [n (n + 1) / 2], upper triangle (diagonal included) in row order

    def matrix(self) -> np.ndarray:
        """``[n, n]`` symmetric float64 matrix of the counts (diagonal: noisy item counts)."""
        n = len(self.item_ids)
        rows, cols = pair_index(n)
        out = np.zeros((n, n), dtype=np.float64)
        out[rows, cols] = self.counts
        out[cols, rows] = self.counts
        return out


def pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each released count: the upper triangle of ``[n, n]``, diagonal included."""
    rows, cols = np.triu_indices(n)
    return rows.astype(np.int64), cols.astype(np.int64)


def exact_cooccurrence(events: pd.DataFrame, item_ids: Sequence[str], cap_per_user: int) -> np.ndarray:
    """The exact counts a release adds noise to: int64 ``[n (n + 1) / 2]`` over ``item_ids`` (in that
    order), each user keeping a random ``cap_per_user`` of their distinct items of the domain."""
    domain = pd.Index(list(item_ids), name="item_id")
    if not domain.is_unique:
        raise ValueError("the co-occurrence domain lists an item twice")
    frame = events.loc[events["item_id"].isin(domain), ["user_id", "item_id"]]
    kept = capped_pairs(frame, ["item_id"], cap_per_user)
    n = len(domain)
    users = pd.factorize(kept["user_id"].astype(str))[0]
    items = domain.get_indexer(kept["item_id"])
    incidence = np.zeros((int(users.max()) + 1 if len(users) else 0, n), dtype=np.float32)
    incidence[users, items] = 1.0
    # float32 sums of 0/1 products are exact integers far beyond any shop's user count (2^24)
    counts = incidence.T @ incidence
    rows, cols = pair_index(n)
    return np.rint(counts[rows, cols]).astype(np.int64)


def release_dp_cooccurrence(
    events: pd.DataFrame, *, noise_multiplier: float, cap_per_user: int, item_ids: Sequence[str]
) -> CooccurrenceCounts:
    """Noisy co-occurrence counts over the public ``item_ids``: OpenDP's discrete Gaussian of scale
    ``noise_multiplier * cooccurrence_sensitivity(cap_per_user)``, fresh CSPRNG noise every call; the
    cost is :func:`cooccurrence_mechanism` (rho-zCDP, user level), reserved by the caller."""
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    mechanism = cooccurrence_mechanism(noise_multiplier, cap_per_user)
    exact = exact_cooccurrence(events, item_ids, cap_per_user)
    noisy = noisy_counts(exact, mechanism.scale, mechanism.l2_sensitivity)
    return CooccurrenceCounts(tuple(item_ids), noisy)


def cooccurrence_mechanism(
    noise_multiplier: float, cap_per_user: int, releases: int = 1
) -> DiscreteGaussianCountMechanism:
    """What :func:`release_dp_cooccurrence` runs: scale ``noise_multiplier * sqrt(k (k + 1) / 2)``."""
    sensitivity = cooccurrence_sensitivity(cap_per_user)
    return DiscreteGaussianCountMechanism(
        scale=noise_multiplier * sensitivity, l2_sensitivity=sensitivity, releases=releases
    )


@dataclass(frozen=True)
class CooccurrenceRelease(ReleaseWindow):
    """The co-occurrence release policy of a training run: events of ``event_types`` in the ``days``
    before the release time, at most ``cap_per_user`` distinct items per user, noise multiplier
    ``noise_multiplier`` (scale / L2 sensitivity); privacy unit user."""

    noise_multiplier: float
    cap_per_user: int
    days: int
    event_types: tuple[str, ...]

    def mechanism(self, releases: int = 1) -> DiscreteGaussianCountMechanism:
        return cooccurrence_mechanism(self.noise_multiplier, self.cap_per_user, releases)

    def release(
        self, events: pd.DataFrame, end: pd.Timestamp, *, item_ids: Sequence[str]
    ) -> CooccurrenceCounts:
        """:func:`release_dp_cooccurrence` of the window before ``end`` over the public ``item_ids``."""
        return release_dp_cooccurrence(
            self.window(events, end),
            noise_multiplier=self.noise_multiplier,
            cap_per_user=self.cap_per_user,
            item_ids=item_ids,
        )


def behaviour_vectors(release: CooccurrenceCounts, dim: int) -> np.ndarray:
    """``[n, dim]`` float32 item vectors from one release (post-processing: reads only the release).

    Positive PMI of the noisy pair counts (negatives clipped to 0, diagonal left out, context
    distribution smoothed with exponent 0.75), then its ``dim`` largest eigenpairs: row ``i`` is
    ``u_i * sqrt(lambda)``, scaled so that the mean row norm is 1 (items whose counts are all noise
    get short vectors).  ``dim`` above ``n`` is padded with zero columns.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    counts = np.clip(release.matrix(), 0.0, None)
    np.fill_diagonal(counts, 0.0)
    n = counts.shape[0]
    out = np.zeros((n, dim), dtype=np.float32)
    total = counts.sum()
    if n == 0 or total <= 0:
        return out
    row = counts.sum(axis=1)
    context = row**CONTEXT_SMOOTHING
    context = context / context.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts / (row[:, None] * context[None, :]))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    ppmi = (ppmi + ppmi.T) / 2  # the smoothing makes PMI asymmetric; its symmetric part has real eigenpairs
    values, vectors = np.linalg.eigh(ppmi)
    keep = np.argsort(-values)[: min(dim, n)]
    embedding = vectors[:, keep] * np.sqrt(np.clip(values[keep], 0.0, None))[None, :]
    norms = np.linalg.norm(embedding, axis=1)
    if norms.mean() > 0:
        embedding = embedding / norms.mean()
    out[:, : embedding.shape[1]] = embedding
    return out
