"""Batch scoring as computed before it was vectorised (issue 19): the NumPy blend of
:func:`tasks.catalog.blend_scores` and :func:`tasks.model.content_affinity` on dense ``[B, N]``
matrices, then ``torch.topk`` under the rules.  The reference its replacement,
:func:`tasks.publishing.score_top_k`, must match (tests/unit/test_scoring_kernel.py).

Copied unchanged from tasks/publishing.py at commit 0dc9d5e; only the names carry a ``reference_``
prefix, and ``reference_blend`` is the closure ``run_publish`` passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tasks.catalog import BlendWeights, blend_scores
from tasks.model import TextNeighbours, content_affinity
from tasks.publishing import PublishRules, TopK


def _rank_within_group(groups: torch.Tensor) -> torch.Tensor:
    """For rows of group labels ``[B, M]`` in score order, each entry's rank inside its group."""

    b, m = groups.shape
    position = torch.arange(m, device=groups.device).expand(b, m)
    order = torch.argsort(groups * m + position, dim=1, stable=True)
    sorted_groups = torch.gather(groups, 1, order)
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[:, 1:] = sorted_groups[:, 1:] != sorted_groups[:, :-1]
    start_pos = torch.where(starts, position, torch.zeros_like(position))
    start_pos = torch.cummax(start_pos, dim=1).values
    rank_sorted = position - start_pos
    rank = torch.empty_like(rank_sorted)
    rank.scatter_(1, order, rank_sorted)
    return rank


def _capped_top_k(
    scores: torch.Tensor, k: int, category: torch.Tensor, cap: int, pool: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` with at most ``cap`` per category, looking at the best ``pool`` items of each row."""

    pool_values, pool_idx = torch.topk(scores, pool, dim=1, sorted=True)
    rank = _rank_within_group(category[pool_idx])
    pool_values = pool_values.masked_fill(rank >= cap, float("-inf"))
    values, pos = torch.topk(pool_values, k, dim=1, sorted=True)
    return values, torch.gather(pool_idx, 1, pos)


def reference_top_k_with_rules(
    scores: torch.Tensor,
    *,
    k: int,
    allowed: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    category: torch.Tensor | None = None,
    max_per_category: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of ``scores [B, N]`` under the rules; returns (values, indices), each ``[B, min(k, N)]``.

    ``allowed [N]``: items still in the catalog. ``excluded [B, N]``: per-row items to drop (purchases
    when they are excluded). ``category [N]`` (int labels) with ``max_per_category``: the diversity cap.
    Slots that no item can fill hold ``-inf`` and index ``-1``.
    """

    masked = scores.clone().float()
    if allowed is not None:
        masked[:, ~allowed] = float("-inf")
    if excluded is not None:
        masked = masked.masked_fill(excluded, float("-inf"))
    n = masked.shape[1]
    k_out = min(k, n)
    if category is not None and max_per_category is not None:
        values, indices = _capped_top_k(masked, k_out, category, max_per_category, pool=min(n, 4 * k_out))
        short = torch.isinf(values).any(dim=1) & ~torch.isinf(masked).all(dim=1)
        if bool(short.any()) and 4 * k_out < n:  # the pool ran dry under the cap: those rows in full
            values[short], indices[short] = _capped_top_k(
                masked[short], k_out, category, max_per_category, pool=n
            )
    else:
        values, indices = torch.topk(masked, k_out, dim=1, sorted=True)
    indices = indices.masked_fill(torch.isinf(values), -1)
    return values, indices


def reference_dense_counts(histories: Sequence[tuple[np.ndarray, np.ndarray]], n_items: int) -> np.ndarray:
    """``[B, N]`` matrix of own purchase counts from per-user (catalog positions, counts) pairs."""
    out = np.zeros((len(histories), n_items), dtype=np.float32)
    rows = np.concatenate([np.full(len(idx), r) for r, (idx, _) in enumerate(histories)] or [np.zeros(0)])
    cols = np.concatenate([idx for idx, _ in histories] or [np.zeros(0)])
    vals = np.concatenate([c for _, c in histories] or [np.zeros(0)])
    if len(rows):
        np.add.at(out, (rows.astype(np.int64), cols.astype(np.int64)), vals.astype(np.float32))
    return out


def reference_score_top_k(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    *,
    rules: PublishRules,
    purchases: Sequence[tuple[np.ndarray, np.ndarray]],
    allowed: np.ndarray | None = None,
    category: np.ndarray | None = None,
    blend: Callable[[np.ndarray, np.ndarray, slice], np.ndarray] | None = None,
) -> TopK:
    """Top-K catalog positions per user: batched ``user @ items.T``, blend, rules, ``torch.topk``.

    ``purchases[u]``: (catalog positions, counts) of user u's own purchases. ``blend(model_scores,
    own_counts, rows) -> scores`` adds the model's repeat/popularity/content signals for the users
    ``rows`` (a slice of the inputs; identity when None).
    """

    n_users, n_items = user_vectors.shape[0], item_vectors.shape[0]
    if len(purchases) != n_users:
        raise ValueError(f"{len(purchases)} purchase histories for {n_users} users")
    allowed_t = torch.from_numpy(np.asarray(allowed, dtype=bool)) if allowed is not None else None
    category_t = torch.from_numpy(np.asarray(category, dtype=np.int64)) if category is not None else None
    k_out = min(rules.k, n_items)
    out_idx = np.full((n_users, k_out), -1, dtype=np.int64)
    out_val = np.full((n_users, k_out), -np.inf, dtype=np.float32)
    items_t = item_vectors.detach().float().t().contiguous()
    with torch.inference_mode():
        for start in range(0, n_users, rules.batch_size):
            stop = min(start + rules.batch_size, n_users)
            raw = (user_vectors[start:stop].detach().float() @ items_t).numpy()
            counts = reference_dense_counts(purchases[start:stop], n_items)
            blended = blend(raw, counts, slice(start, stop)) if blend is not None else raw
            excluded = torch.from_numpy(counts > 0) if not rules.include_purchased else None
            values, indices = reference_top_k_with_rules(
                torch.from_numpy(np.ascontiguousarray(blended, dtype=np.float32)),
                k=k_out,
                allowed=allowed_t,
                excluded=excluded,
                category=category_t,
                max_per_category=rules.max_per_category,
            )
            out_idx[start:stop] = indices.numpy()
            out_val[start:stop] = values.numpy()
    return TopK(indices=out_idx, scores=out_val)


def reference_blend(
    weights: BlendWeights,
    popularity: np.ndarray | None,
    recents: Sequence[np.ndarray] | None,
    neighbours: TextNeighbours | None,
) -> Callable[[np.ndarray, np.ndarray, slice], np.ndarray]:
    """The blend closure of ``run_publish`` before issue 19."""

    def blend(raw: np.ndarray, counts: np.ndarray, rows: slice) -> np.ndarray:
        content = None
        if neighbours is not None and recents is not None:
            content = content_affinity(list(recents[rows]), neighbours, raw.shape[1])
        return blend_scores(raw, counts, popularity, weights, content)

    return blend
