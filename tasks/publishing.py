"""Batch scoring of every active user with the champion model, and publishing the top-K to Feast.

Scoring (:func:`score_top_k`): user vectors ``[U, d]`` times the catalog's item vectors ``[N, d]`` on
chunks of users sized to the cache (one matrix product per chunk, no Python loop over users or
items), blended as the model was tuned (:class:`ScoreBlend`, the formula of
:func:`tasks.catalog.blend_scores`: z-scored model score, the user's own repeat-purchase signal, the
text neighbours of the user's recent items (as :func:`tasks.model.content_affinity`, over the current
catalog, so new items take part through their titles), DP popularity), then the business rules, each
in :class:`PublishRules`:

* items no longer in the catalog are never recommended (``allowed`` mask);
* items the user already bought are included by default (``include_purchased=True``: repeat purchases
  are real in retail, and the model's repeat signal ranks them); ``False`` removes them;
* at most ``max_per_category`` items of one category per list (diversity); ``None`` lifts the cap.

Top-K: ``argpartition`` to a pool of the best ``2k``, ordered by (score, catalog position); the
category cap takes items greedily in that order (:func:`_capped`), over the whole row where
the pool runs short.  The same selection makes the cold-start lists (:func:`popularity_top_k`).

Reasons (:func:`explain`): for each recommended item, the item of the user's own history (purchases
first, else recent items) with the highest text-embedding cosine similarity: ``bought:<item_id>`` or
``viewed:<item_id>``.  Cold-start users (no usable history) get DP popularity of their country, else
the global one, with reason ``popular:<country>`` / ``popular:global``; the same lists are published
under the entity keys ``popular:<country>`` and ``popular:global`` for consumers' unknown users.  New
items are scored through their text vectors (the item tower has no per-item parameters by default).

Every run is keyed on its scoring time (the run's data interval end, never ``now()``) and the model
version: ``publish_id = <model version>@<scoring time>``.  See :mod:`tasks.publishing` functions
:func:`publish` for the blue/green online write and :func:`write_offline_copy` for the audit copy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.catalog import BlendWeights, ItemCatalog
from tasks.code_version import code_version
from tasks.config import Settings
from tasks.contracts import PURCHASE
from tasks.feast_store import apply_definitions, build_definitions, get_store
from tasks.features import item_features_path, read_events, snapshot_time, user_features_dir
from tasks.io import atomic_write_parquet, run_days
from tasks.privacy import ChargeStatus, PopularityRelease
from tasks.privacy.anchors import write_anchor_file
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.policy import budget_for_run

if TYPE_CHECKING:
    import torch
    from feast import FeatureStore

    from tasks.model import Recommender, TextNeighbours

GLOBAL: Final = "global"
SERVICE_NAME_DEFAULT: Final = "recommendations_v1"
POPULAR_PREFIX: Final = "popular:"
BOUGHT: Final = "bought:"
VIEWED: Final = "viewed:"

RECOMMENDATIONS_SCHEMA: Final = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.list_(pa.float64()), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("publish_id", pa.string(), nullable=False),
        pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True)
class PublishRules:
    """Business rules of a published list. Defaults: K=50, repeat purchases kept, 10 per category."""

    k: int = 50
    include_purchased: bool = True
    max_per_category: int | None = 10
    batch_size: int = 512
    active_days: int = 30  # users with an event in the last ``active_days`` before scoring time

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1 or self.active_days < 1:
            raise ValueError(f"invalid rules {self}")
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValueError("max_per_category must be >= 1 or None")


@dataclass(frozen=True)
class TopK:
    """Per-user top-K: catalog positions ``[U, K]`` (-1 = no item) and blended scores ``[U, K]``."""

    indices: np.ndarray
    scores: np.ndarray


# --- top-K with business rules -----------------------------------------------------------------------
# Floats in one chunk's [rows, N] score buffer (2 MiB; the content buffer is as large): 2**17 to 2**21
# measured within 10% of each other on 4,000 items, 2**19 the fastest.
CHUNK_FLOATS: Final = 2**19


@dataclass(frozen=True)
class ScoreBlend:
    """The blend :func:`score_top_k` applies, as the model was tuned (:func:`tasks.catalog.blend_scores`):
    ``model * z(model score) + repeat * log1p(own purchases) + popularity * z(log1p(DP popularity))
    + content * z(content affinity)``, with the content affinity of :func:`tasks.model.content_affinity`
    over ``neighbours`` of each user's ``recents`` (catalog positions)."""

    weights: BlendWeights
    popularity: np.ndarray | None = None
    recents: Sequence[np.ndarray] | None = None
    neighbours: TextNeighbours | None = None

    @property
    def uses_content(self) -> bool:
        return bool(self.weights.content) and self.neighbours is not None and self.recents is not None


@contextlib.contextmanager
def _one_torch_thread() -> Generator[None, None, None]:
    """Run the chunk loop on one torch thread: its many small operations gain nothing from a second
    thread, and on a busy machine each parallel one waits for a descheduled thread (2 threads, 2
    shared cores at load 6: 489 users/s against 12,047 on one; the product is 6% of the time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _flat(parts: Sequence[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [U+1], values) of per-user arrays concatenated once."""
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(p, dtype=dtype) for p in parts]) if len(parts) else np.zeros(0, dtype)
    return offsets, values.astype(dtype, copy=False)


def _z_popularity(popularity: np.ndarray) -> np.ndarray:
    pop = np.log1p(np.clip(popularity, 0, None))
    return np.asarray((pop - pop.mean()) / (pop.std() + 1e-6), dtype=np.float64)


def _order_keys(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is (value descending, position ascending): the float32 value's
    bits mapped to an order-preserving int32 (negated) in the high word, the position in the low word."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.int32)  # + 0: -0.0 -> 0.0
    monotone = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # increases with the float
    keys = np.negative(monotone, dtype=np.int64)
    keys <<= 32
    keys |= positions
    return keys


def _select(scores: np.ndarray, m: int) -> np.ndarray:
    """Per row, the positions of the ``m`` best scores, best first, ties by position: ``[B, m]``
    (``argpartition`` to the pool, then one integer sort of its (score, position) keys)."""
    n = scores.shape[1]
    if m < n:
        pool = np.argpartition(scores, n - m, axis=1)[:, n - m :]
    else:
        pool = np.broadcast_to(np.arange(n), scores.shape)
    keys = _order_keys(np.take_along_axis(scores, pool, axis=1), pool)
    keys.sort(axis=1)
    return keys & np.int64(0xFFFFFFFF)


def _capped(scores: np.ndarray, ranked: np.ndarray, k: int, category: np.ndarray, cap: int) -> np.ndarray:
    """From ``ranked`` positions (best first), the first ``k`` with at most ``cap`` per category; -1 pads.

    An entry's rank inside its category: one integer sort of (category, slot) keys, the slot minus its
    category's first sorted slot."""
    b, m = ranked.shape
    slot = np.arange(m, dtype=np.int64)
    keys = category[ranked].astype(np.int64) << 32
    keys |= slot
    keys.sort(axis=1)
    groups = keys >> 32
    starts = np.ones((b, m), dtype=bool)
    starts[:, 1:] = groups[:, 1:] != groups[:, :-1]
    first = np.maximum.accumulate(np.where(starts, slot, 0), axis=1)
    rank = np.empty((b, m), dtype=np.int64)
    np.put_along_axis(rank, keys & np.int64(0xFFFFFFFF), slot - first, axis=1)
    ok = (rank < cap) & np.isfinite(np.take_along_axis(scores, ranked, axis=1))
    out_slot = np.cumsum(ok, axis=1) - 1
    ok &= out_slot < k
    rows, cols = np.nonzero(ok)
    top = np.full((b, k), -1, dtype=np.int64)
    top[rows, out_slot[rows, cols]] = ranked[rows, cols]
    return top


def _top_positions(scores: np.ndarray, k: int, category: np.ndarray | None, cap: int | None) -> np.ndarray:
    """Top-``k`` positions per row of ``scores [B, N]`` with at most ``cap`` per ``category`` (-1: no
    item): greedy in score order (ties by position) over a pool of the best ``2k``, over the whole row
    where the pool runs short (the pool's size changes the cost, never the result: ``4k`` measured
    25% slower on 4,000 items in 10 categories)."""
    n = scores.shape[1]
    k = min(k, n)
    if category is None or cap is None:
        top = _select(scores, k)
        return np.where(np.isfinite(np.take_along_axis(scores, top, axis=1)), top, -1)
    pool = min(n, 2 * k)
    top = _capped(scores, _select(scores, pool), k, category, cap)
    found = (top >= 0).sum(axis=1)
    short = np.flatnonzero((found < k) & (np.isfinite(scores).sum(axis=1) > found))
    if len(short) and pool < n:
        full = scores[short]
        top[short] = _capped(full, _select(full, n), k, category, cap)
    return top


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def top_k_with_rules(
    scores: np.ndarray | torch.Tensor,
    *,
    k: int,
    allowed: np.ndarray | torch.Tensor | None = None,
    excluded: np.ndarray | torch.Tensor | None = None,
    category: np.ndarray | torch.Tensor | None = None,
    max_per_category: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of ``scores [B, N]`` under the rules; returns (values, indices), each ``[B, min(k, N)]``.

    ``allowed [N]``: items still in the catalog. ``excluded [B, N]``: per-row items to drop (purchases
    when they are excluded). ``category [N]`` (int labels) with ``max_per_category``: the diversity cap.
    Equal scores rank by catalog position. Slots that no item can fill hold ``-inf`` and index ``-1``.
    """
    masked = np.array(_numpy(scores), dtype=np.float32, ndmin=2)
    if allowed is not None:
        masked[:, ~_numpy(allowed).astype(bool)] = -np.inf
    if excluded is not None:
        masked[_numpy(excluded).astype(bool)] = -np.inf
    groups = _numpy(category).astype(np.int64) if category is not None else None
    indices = _top_positions(masked, k, groups, max_per_category)
    values = np.take_along_axis(masked, np.where(indices >= 0, indices, 0), axis=1)
    return np.where(indices >= 0, values, -np.inf).astype(np.float32), indices


def score_top_k(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    *,
    rules: PublishRules,
    purchases: Sequence[tuple[np.ndarray, np.ndarray]],
    allowed: np.ndarray | None = None,
    category: np.ndarray | None = None,
    blend: ScoreBlend | None = None,
    threads: int = 1,
) -> TopK:
    """Top-K catalog positions per user and their blended scores, vectorised on chunks of users.

    ``purchases[u]``: (catalog positions, counts) of user u's own purchases; ``blend``: the
    :class:`ScoreBlend` (None: the bare model score); ``threads``: chunks scored at once, each on one
    torch thread (the chunk's operations release the GIL).  Per chunk of users (sized so its score
    rows stay in the cache), the content affinity first (a scatter-max of the text neighbours of the
    recent items into a ``[rows, N]`` buffer) and its row std; then one matrix product accumulated
    onto that buffer gives each row's ranking score divided by the row's positive content gain
    ``content / (std + 1e-6)`` (a positive factor per row leaves its ranking as it is): the model
    score times ``model / (row std + 1e-6)`` plus the weighted z-scored popularity (one more row of
    the item matrix), both divided by the gain, plus the affinity; the repeat term (over the gain) is
    added at the user's purchases.  Row means only shift a row, so the ranking leaves them out.  The
    model scores' row mean and std come from the item vectors' mean and covariance (``u . mean``,
    ``u' cov u``, float64), the content's from its row sums.  Top-K: ``argpartition`` to a pool
    ordered by (score, position), the category cap greedily over the pool (over the whole row where
    the pool runs short).  The chosen items' scores are then computed in float64 term by term as
    :func:`tasks.catalog.blend_scores` computes them.  tests/unit/test_scoring_kernel.py pins equal
    top-K to that NumPy blend and ``top_k_with_rules``.
    """
    import torch

    n_users, n_items = user_vectors.shape[0], item_vectors.shape[0]
    if len(purchases) != n_users:
        raise ValueError(f"{len(purchases)} purchase histories for {n_users} users")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    content = blend is not None and blend.uses_content
    if content and blend is not None and blend.recents is not None and len(blend.recents) != n_users:
        raise ValueError(f"{len(blend.recents)} recent-item lists for {n_users} users")
    k_out = min(rules.k, n_items)
    out_idx = np.full((n_users, k_out), -1, dtype=np.int64)
    out_val = np.full((n_users, k_out), -np.inf, dtype=np.float32)
    if n_users == 0 or n_items == 0:
        return TopK(indices=out_idx, scores=out_val)
    weights = blend.weights if blend is not None else None
    cat = np.asarray(category, dtype=np.int64) if category is not None else None
    items32 = item_vectors.detach().float().contiguous()
    items64 = items32.double()
    item_mean = items64.mean(0)
    item_cov = (items64 - item_mean).T @ (items64 - item_mean) / n_items
    pop_z = np.zeros(n_items, dtype=np.float64)
    if weights is not None and weights.popularity and blend is not None and blend.popularity is not None:
        pop_z = _z_popularity(np.asarray(blend.popularity, dtype=np.float64))
    pop_term = pop_z * (weights.popularity if weights is not None else 0.0)
    design = torch.cat([items32.t(), torch.from_numpy(pop_term.astype(np.float32))[None, :]]).contiguous()
    barred = (
        torch.from_numpy(np.flatnonzero(~np.asarray(allowed, dtype=bool))) if allowed is not None else None
    )
    # own purchases as sorted (user * N + item) keys, duplicate counts summed, once for all chunks
    buy_offsets, buy_items = _flat([p for p, _ in purchases], np.int64)
    _, buy_counts = _flat([c for _, c in purchases], np.float64)
    owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(buy_offsets))
    bought_keys, inverse = np.unique(owner * n_items + buy_items, return_inverse=True)
    bought_counts = np.bincount(inverse.reshape(-1), weights=buy_counts, minlength=len(bought_keys))
    repeat_all = np.zeros(len(bought_keys))
    if weights is not None and weights.repeat:
        repeat_all = weights.repeat * np.log1p(np.clip(bought_counts, 0, None))
    if content:
        assert blend is not None
        assert blend.neighbours is not None
        assert blend.recents is not None
        recent_offsets, recent_items = _flat(blend.recents, np.int64)
        neighbour_index = torch.from_numpy(np.ascontiguousarray(blend.neighbours.index, dtype=np.int64))
        neighbour_sim = torch.from_numpy(np.ascontiguousarray(blend.neighbours.similarity, dtype=np.float32))
        neighbour_sim = neighbour_sim.clamp(min=0.0)
    # positive gain: the product is accumulated onto the affinity, every other term over the gain
    divide = content and weights is not None and weights.content > 0

    def score_chunk(start: int, stop: int) -> None:
        b = stop - start
        users = user_vectors[start:stop].detach().float()
        users64 = users.double()
        row_mean = (users64 @ item_mean).numpy()
        row_std = ((users64 @ item_cov) * users64).sum(1).clamp(min=0.0).sqrt().numpy()
        scale = np.ones(b) if weights is None else weights.model / (row_std + 1e-6)
        affinity, c_mean, c_std, gain = None, np.zeros(b), np.zeros(b), np.ones(b)
        if content:
            assert weights is not None
            r_lo, r_hi = recent_offsets[start], recent_offsets[stop]
            mine = torch.from_numpy(recent_items[r_lo:r_hi])
            holder = torch.from_numpy(
                np.repeat(
                    np.arange(0, b * n_items, n_items, dtype=np.int64),
                    np.diff(recent_offsets[start : stop + 1]),
                )
            )
            targets = neighbour_index.index_select(0, mine).add_(holder[:, None]).view(-1)
            affinity = torch.zeros(b, n_items)
            affinity.view(-1).scatter_reduce_(
                0, targets, neighbour_sim.index_select(0, mine).view(-1), reduce="amax", include_self=True
            )
            c_mean = affinity.sum(1).double().numpy() / n_items
            squares = torch.linalg.vector_norm(affinity, dim=1).double().numpy() ** 2 / n_items
            c_std = np.sqrt(np.clip(squares - c_mean**2, 0, None))
            gain = weights.content / (c_std + 1e-6)
        divisor = gain if divide else np.ones(b)
        lhs = torch.from_numpy(np.stack([scale, np.ones(b)], 1) / divisor[:, None]).float()
        lhs = torch.cat([users * lhs[:, :1], lhs[:, 1:]], 1)
        if divide:
            assert affinity is not None
            scores = affinity.clone().addmm_(lhs, design)  # [b, N]: ranking scores / gain
        else:
            scores = lhs @ design  # [b, N]: the ranking scores
            if affinity is not None:
                scores.addcmul_(affinity, torch.from_numpy(gain.astype(np.float32))[:, None])
        flat = scores.view(-1)
        lo, hi = np.searchsorted(bought_keys, [start * n_items, stop * n_items])
        bought = bought_keys[lo:hi] - start * n_items
        repeat = repeat_all[lo:hi]
        if weights is not None and weights.repeat and hi > lo:
            owners = bought // n_items
            flat.index_add_(
                0, torch.from_numpy(bought), torch.from_numpy((repeat / divisor[owners]).astype(np.float32))
            )
        if not rules.include_purchased:
            flat[torch.from_numpy(bought[bought_counts[lo:hi] > 0])] = float("-inf")
        if barred is not None and len(barred):
            scores.index_fill_(1, barred, float("-inf"))
        ranked = scores.numpy()
        top = _top_positions(ranked, rules.k, cat, rules.max_per_category)
        valid = top >= 0
        safe = np.where(valid, top, 0)
        if weights is None:
            value = np.take_along_axis(ranked, safe, axis=1).astype(np.float64)
        else:  # the chosen items' scores, term by term as blend_scores computes them
            chosen = items32.index_select(0, torch.from_numpy(safe.reshape(-1))).view(b, k_out, -1)
            raw = torch.bmm(chosen, users[:, :, None]).view(b, k_out).double().numpy()  # float32 products
            value = weights.model * ((raw - row_mean[:, None]) / (row_std[:, None] + 1e-6))
            if weights.repeat and len(bought):
                keys = np.arange(b, dtype=np.int64)[:, None] * n_items + safe
                at = np.clip(np.searchsorted(bought, keys), 0, len(bought) - 1)
                value = value + np.where(bought[at] == keys, repeat[at], 0.0)
            if weights.popularity:
                value = value + pop_term[safe]
            if affinity is not None:
                near = np.take_along_axis(affinity.numpy(), safe, axis=1).astype(np.float64)
                value = value + weights.content * ((near - c_mean[:, None]) / (c_std[:, None] + 1e-6))
        out_idx[start:stop] = top
        out_val[start:stop] = np.where(valid, value, -np.inf).astype(np.float32)

    rows = max(8, min(rules.batch_size, CHUNK_FLOATS // n_items))
    chunks = [(start, min(start + rows, n_users)) for start in range(0, n_users, rows)]
    with torch.inference_mode(), _one_torch_thread():
        if threads == 1 or len(chunks) == 1:
            for start, stop in chunks:
                score_chunk(start, stop)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for done in pool.map(lambda chunk: score_chunk(*chunk), chunks):
                    del done
    return TopK(indices=out_idx, scores=out_val)


def popularity_top_k(
    popularity: np.ndarray,
    *,
    rules: PublishRules,
    allowed: np.ndarray | None = None,
    category: np.ndarray | None = None,
) -> TopK:
    """The top-K of one DP popularity vector ``[N]`` under the same rules (cold-start lists)."""
    values, indices = top_k_with_rules(
        np.asarray(popularity, dtype=np.float32)[None, :],
        k=rules.k,
        allowed=allowed,
        category=category,
        max_per_category=rules.max_per_category,
    )
    return TopK(indices=indices, scores=values)


# --- reasons -----------------------------------------------------------------------------------------
def explain(
    recommended: np.ndarray, histories: Sequence[np.ndarray], text: np.ndarray, batch_size: int = 512
) -> np.ndarray:
    """For each recommended position ``[U, K]`` the history position with the highest text cosine.

    ``histories[u]``: catalog positions of user u's history; ``text [N, D]``: item text vectors.
    Returns ``[U, K]`` catalog positions, -1 where the slot or the history is empty.
    """
    import torch

    unit = torch.nn.functional.normalize(torch.from_numpy(np.asarray(text, dtype=np.float32)), dim=1)
    n_users, k = recommended.shape
    out = np.full((n_users, k), -1, dtype=np.int64)
    for start in range(0, n_users, batch_size):
        hist = histories[start : start + batch_size]
        width = max((len(h) for h in hist), default=0)
        if width == 0:
            continue
        pad = np.full((len(hist), width), -1, dtype=np.int64)
        for row, h in enumerate(hist):
            pad[row, : len(h)] = h
        hist_t = torch.from_numpy(pad)
        rec_t = torch.from_numpy(recommended[start : start + len(hist)])
        sims = torch.einsum("ukd,uhd->ukh", unit[rec_t.clamp(min=0)], unit[hist_t.clamp(min=0)])
        sims = sims.masked_fill((hist_t < 0)[:, None, :], float("-inf"))
        best = torch.gather(hist_t, 1, sims.argmax(dim=2))
        best = best.masked_fill((rec_t < 0) | (hist_t < 0).all(dim=1, keepdim=True), -1)
        out[start : start + len(hist)] = best.numpy()
    return out


# --- rows, offline copy ------------------------------------------------------------------------------
def publish_id_for(model_version: str, scoring_time: dt.datetime) -> str:
    """``<model version>@<scoring time, UTC, basic ISO>``: the key of one publish."""
    return f"{model_version}@{scoring_time.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"


def build_rows(
    user_ids: Sequence[str],
    top: TopK,
    reasons: Sequence[Sequence[str]],
    item_ids: Sequence[str],
    *,
    model_version: str,
    scoring_time: dt.datetime,
) -> pd.DataFrame:
    """One row per user in :data:`RECOMMENDATIONS_SCHEMA` order; empty slots are dropped."""
    ids = np.asarray(item_ids, dtype=object)
    stamp = pd.Timestamp(scoring_time).tz_convert("UTC")
    publish = publish_id_for(model_version, scoring_time)
    rows_items, rows_scores, rows_reasons = [], [], []
    for row in range(len(user_ids)):
        keep = top.indices[row] >= 0
        rows_items.append([str(x) for x in ids[top.indices[row][keep]]])
        rows_scores.append([round(float(x), 6) for x in top.scores[row][keep]])
        rows_reasons.append([str(r) for r, k in zip(reasons[row], keep, strict=True) if k])
    return pd.DataFrame(
        {
            "user_id": [str(u) for u in user_ids],
            "item_ids": rows_items,
            "scores": rows_scores,
            "reasons": rows_reasons,
            "model_version": model_version,
            "publish_id": publish,
            "generated_at": stamp,
            "event_timestamp": stamp,
        }
    )


def offline_path(root: Path, publish_id: str) -> Path:
    """The audit copy of one publish: ``<root>/publish_id=<id>/recommendations.parquet``."""
    safe = publish_id.replace("/", "_").replace(":", "-")
    return root / f"publish_id={safe}" / "recommendations.parquet"


def write_offline_copy(frame: pd.DataFrame, path: Path) -> Path:
    """Write the rows (sorted by user) as parquet: temp file, then rename; same rows, same bytes."""
    table = pa.Table.from_pandas(
        frame.sort_values("user_id", kind="stable").reset_index(drop=True),
        schema=RECOMMENDATIONS_SCHEMA,
        preserve_index=False,
    ).replace_schema_metadata(None)
    return atomic_write_parquet(path, table)


def reason_labels(explained: np.ndarray, kinds: Sequence[str], item_ids: Sequence[str]) -> list[list[str]]:
    """``bought:<id>`` / ``viewed:<id>`` per slot from :func:`explain` output; ``""`` when none.

    ``kinds[u]`` is :data:`BOUGHT` or :data:`VIEWED`: which history of user u was searched.
    """
    ids = np.asarray(item_ids, dtype=object)
    out = []
    for row, kind in enumerate(kinds):
        out.append([f"{kind}{ids[p]}" if p >= 0 else "" for p in explained[row]])
    return out


# --- the scoring catalog: the current catalog through the champion's item tower ------------------
@dataclass(frozen=True)
class ScoringCatalog:
    """The current catalog as scored: ids, item vectors, text vectors, category labels, popularity."""

    item_ids: tuple[str, ...]
    vectors: torch.Tensor  # [N, dim] item-tower vectors of the champion
    text: np.ndarray  # [N, D] title embeddings (reasons)
    category: np.ndarray  # [N] int labels (diversity cap)
    popularity: np.ndarray | None  # [N] the champion's DP popularity release (0 for new items)
    n_new: int  # items the champion never saw, scored through their text

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        index = {item: i for i, item in enumerate(self.item_ids)}
        found = [index[i] for i in item_ids if i in index]
        return np.asarray(found, dtype=np.int64)


def scoring_catalog(recommender: Recommender, items: pd.DataFrame) -> ScoringCatalog:
    """Score the CURRENT catalog (``items``: item_id, category, price, embedding) with the champion.

    Items that left the catalog are gone from the result, so they are never recommended; the champion
    moves to the current catalog as :meth:`tasks.model.Recommender.on_catalog` moves it (known items
    keep their item-tower inputs and DP behaviour vectors, items it never saw enter through their
    title embedding, category and price with zero behaviour columns). With ``item_id_dim > 0`` unseen
    items are dropped (the tower has no row for them).
    """
    import torch

    known = recommender.catalog
    frame = items.dropna(subset=["embedding"]).sort_values("item_id", kind="stable")
    if known.n_items and recommender.model.config.item_id_dim > 0:
        frame = frame[frame["item_id"].isin(set(known.item_ids))]
    if frame.empty:
        raise ValueError("no current catalog item can be scored")
    ids = tuple(str(i) for i in frame["item_id"])
    text = np.stack([np.asarray(v, dtype=np.float32) for v in frame["embedding"]])
    category = frame["category"].fillna("<unknown>").astype(str)
    names = tuple(sorted(set(category)))
    price = frame["price"].fillna(0.0).to_numpy(dtype=np.float64)
    catalog = ItemCatalog(
        item_ids=ids,
        text=text,
        category_index=np.asarray([names.index(c) for c in category], dtype=np.int64),
        price_bucket=np.searchsorted(np.asarray(known.price_edges), price).astype(np.int64),
        categories=names,
        price_edges=known.price_edges,
        encoder_id=known.encoder_id,
        behaviour=known.behaviour_for(ids),  # the champion's DP release; zero rows for new items
    )
    moved = recommender.on_catalog(catalog)
    moved.model.eval()
    with torch.inference_mode():
        vectors = moved.item_vectors()
    popularity = None
    if recommender.popularity is not None and len(recommender.popularity):
        old_pos = known.index_of(list(ids))  # model index (1-based), 0 = unseen
        padded = np.concatenate([[0.0], np.asarray(recommender.popularity, dtype=np.float64)])
        popularity = padded[old_pos]
    return ScoringCatalog(
        item_ids=ids,
        vectors=vectors,
        text=text,
        category=catalog.category_index,
        popularity=popularity,
        n_new=int(sum(1 for i in ids if i not in set(known.item_ids))),
    )


# --- Feast: blue/green slots and the atomic switch of recommendations_v1 -------------------------
@dataclass(frozen=True)
class OnlinePublish:
    """What the online write did: the slot now live, its publish id, rows written (0: already live)."""

    slot: str
    publish_id: str
    rows_written: int
    already_live: bool
    superseded: bool = False  # a newer publish is live: this older one was not switched in


VIEW_NAME: Final = "user_recommendations"
SLOTS: Final = ("user_recommendations_blue", "user_recommendations_green")
SOURCE_NAME: Final = "user_recommendations_source"


def recommendations_source(settings: Settings) -> Any:
    """The per-publish parquet audit copies (``publish_id=*/recommendations.parquet``)."""
    from feast import FileSource
    from feast.data_format import ParquetFormat

    return FileSource(
        name=SOURCE_NAME,
        path=str(offline_root(settings) / "publish_id=*" / "recommendations.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description="audit copy of every publish of user recommendations",
    )


def recommendation_view(slot: str, user: Any, source: Any) -> Any:
    """One slot of the blue/green pair (entity ``user``; schema in docs/consumers.md)."""
    from feast import FeatureView, Field
    from feast.types import Array, Float64, String, UnixTimestamp

    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; expected one of {SLOTS}")
    return FeatureView(
        name=slot,
        entities=[user],
        ttl=dt.timedelta(0),
        online=True,
        source=source,
        schema=[
            Field(name="item_ids", dtype=Array(String), description="recommended item ids, best first"),
            Field(name="scores", dtype=Array(Float64), description="blended score of each item"),
            Field(name="reasons", dtype=Array(String), description="bought:/viewed:<item>, popular:<scope>"),
            Field(name="model_version", dtype=String, description="MLflow version of the champion"),
            Field(name="publish_id", dtype=String, description="<model version>@<scoring time>"),
            Field(name="generated_at", dtype=UnixTimestamp, description="scoring time (interval end)"),
        ],
        description=f"top-K recommendations per user ({slot.rsplit('_', 1)[1]} slot)",
        tags={"slot": slot},
    )


def recommendations_service(view: Any, tags: dict[str, str]) -> Any:
    """``recommendations_v1``: the live slot projected under the stable name ``user_recommendations``."""
    from feast import FeatureService

    return FeatureService(
        name=SERVICE_NAME_DEFAULT,
        features=[view.with_name(VIEW_NAME)],
        description="published recommendations: item_ids, scores, reasons, model_version, generated_at",
        tags=tags,
    )


def recommendation_objects(settings: Settings) -> list[Any]:
    """Both slot views (no service: :func:`publish_online` applies it when it switches)."""
    user = build_definitions(settings.features_dir).user
    source = recommendations_source(settings)
    return [user, source, *(recommendation_view(slot, user, source) for slot in SLOTS)]


def live_slot(store: FeatureStore) -> tuple[str | None, str | None]:
    """(live slot view name, live publish id) from the ``recommendations_v1`` tags; (None, None) if none."""
    try:
        service = store.get_feature_service(SERVICE_NAME_DEFAULT, allow_cache=False)
    except Exception:  # FeatureServiceNotFoundException: nothing published yet
        return None, None
    return service.tags.get("slot"), service.tags.get("publish_id")


def _live_generated_at(store: FeatureStore) -> pd.Timestamp | None:
    try:
        tags = store.get_feature_service(SERVICE_NAME_DEFAULT, allow_cache=False).tags
    except Exception:  # FeatureServiceNotFoundException: nothing published yet
        return None
    return pd.Timestamp(tags["generated_at"]).tz_convert("UTC") if tags.get("generated_at") else None


def _clear_slot(store: FeatureStore, view: Any) -> None:
    """Drop and recreate one slot's online table (Redis: delete its fields), so no stale row survives."""
    provider = store._get_provider()  # Feast has no public per-view truncate
    for delete, keep in (([view], []), ([], [view])):
        provider.update_infra(
            project=store.project,
            tables_to_delete=delete,
            tables_to_keep=keep,
            entities_to_delete=[],
            entities_to_keep=[],
            partial=True,
        )


def read_slot(store: FeatureStore, slot: str, user_ids: Sequence[str]) -> dict[str, list[Any]]:
    """The online rows of one slot (not what consumers read; for verification and tests)."""
    features = [f"{slot}:{f}" for f in ("item_ids", "scores", "reasons", "model_version", "publish_id")]
    response = store.get_online_features(features=features, entity_rows=[{"user_id": u} for u in user_ids])
    return dict(response.to_dict())


def publish_online(
    store: FeatureStore,
    rows: pd.DataFrame,
    *,
    chunk_rows: int = 5000,
    on_chunk: Callable[[int], None] | None = None,
) -> OnlinePublish:
    """Write ``rows`` to the slot that is not live, verify every row, then switch ``recommendations_v1``.

    If the live slot already holds this ``publish_id`` nothing is written (a re-run); if it holds a
    publish with a later scoring time, nothing is written either (``superseded``: a backfill of an older
    interval never rolls consumers back). A failure at any
    point before the switch leaves the service on the previous slot, whose rows are untouched.
    ``on_chunk(rows_written_so_far)`` is called after each chunk (progress; failure drills).
    """
    publish_ids = rows["publish_id"].unique().tolist()
    if len(publish_ids) != 1:
        raise ValueError(f"rows of one publish expected, got publish ids {publish_ids}")
    publish_id = str(publish_ids[0])
    live, live_id = live_slot(store)
    if live is not None and live_id == publish_id:
        return OnlinePublish(slot=live, publish_id=publish_id, rows_written=0, already_live=True)
    generated = pd.Timestamp(rows["generated_at"].iloc[0]).tz_convert("UTC")
    live_generated = _live_generated_at(store)
    if live is not None and live_id is not None and live_generated is not None and generated < live_generated:
        # a re-run or backfill of an older interval must not roll consumers back to older lists
        return OnlinePublish(
            slot=live, publish_id=live_id, rows_written=0, already_live=False, superseded=True
        )
    target = SLOTS[1] if live == SLOTS[0] else SLOTS[0]
    view = store.get_feature_view(target, allow_registry_cache=False)
    _clear_slot(store, view)
    written = 0
    for start in range(0, len(rows), chunk_rows):
        chunk = rows.iloc[start : start + chunk_rows]
        store.write_to_online_store(target, chunk, allow_registry_cache=False)
        written += len(chunk)
        if on_chunk is not None:
            on_chunk(written)
    check = read_slot(store, target, rows["user_id"].tolist())
    wrong = [u for u, p in zip(check["user_id"], check["publish_id"], strict=True) if p != publish_id]
    if wrong:
        raise RuntimeError(
            f"slot {target}: {len(wrong)} rows do not hold publish {publish_id}; not switching"
        )
    model_version = str(rows["model_version"].iloc[0])
    tags = {
        "slot": target,
        "publish_id": publish_id,
        "model_version": model_version,
        "generated_at": generated.isoformat(),
        "rows": str(len(rows)),
    }
    store.apply([recommendations_service(view, tags)])
    return OnlinePublish(slot=target, publish_id=publish_id, rows_written=written, already_live=False)


def offline_root(settings: Settings) -> Path:
    """Folder of the per-publish audit copies."""
    return settings.home / "recommendations"


# --- per-country DP popularity for cold start (one ledger-charged release per champion) ---------------
COUNTRY_POPULARITY_PURPOSE: Final = "publish_popularity_by_country"


def country_popularity_release(settings: Settings) -> PopularityRelease:
    """The per-country DP popularity release of a publish (``SHOPREC_COUNTRY_POPULARITY_*``): purchases
    of the days before the scoring time, at most ``cap_per_user`` distinct (country, item) keys per user."""
    return PopularityRelease(
        noise_multiplier=settings.country_popularity_noise_multiplier,
        cap_per_user=settings.country_popularity_cap_per_user,
        days=settings.country_popularity_days,
        event_types=(PURCHASE,),
        by_country=True,
    )


def user_countries(events: pd.DataFrame) -> dict[str, str]:
    """Each user's country on their most recent event (the user's own data)."""
    known = events.dropna(subset=["country"]).sort_values("event_timestamp", kind="stable")
    latest = known.drop_duplicates("user_id", keep="last")
    return dict(zip(latest["user_id"].astype(str), latest["country"].astype(str), strict=True))


def country_popularity(
    settings: Settings,
    events: pd.DataFrame,
    item_ids: Sequence[str],
    *,
    scoring_time: dt.datetime,
    model_version: str,
) -> dict[str, np.ndarray]:
    """DP distinct-buyer counts per (country, item) over ``settings.publish_countries``, ``[N]`` each.

    Released once per champion version (cached beside the audit copies) and charged to the ledger
    before it runs: :func:`country_popularity_release` (OpenDP's discrete Gaussian of scale noise multiplier *
    sqrt(cap), L2 sensitivity sqrt(cap)), rho-zCDP composed by the ledger accountant (opacus-rdp) at the
    scope's delta, privacy unit = user.  Every release has its own charge: when the cache is missing
    a new charge is reserved (:func:`_release_country_popularity`), never an earlier one reused.
    """
    countries = sorted(settings.publish_countries)
    if not countries:
        return {}
    cache = offline_root(settings) / "popularity" / f"model={model_version.replace('/', '_')}.parquet"
    if not cache.exists():
        ledger = open_ledger(settings)
        try:
            _release_country_popularity(
                settings, ledger, events, item_ids, countries, scoring_time, model_version, cache
            )
        finally:
            ledger.close()
    released = pd.read_parquet(cache)
    out = {}
    for country in countries:
        counts = released[released["country"] == country].set_index("item_id")["noisy_count"]
        out[country] = counts.reindex(list(item_ids), fill_value=0.0).to_numpy(dtype=np.float64)
    return out


def _release_country_popularity(
    settings: Settings,
    ledger: Any,
    events: pd.DataFrame,
    item_ids: Sequence[str],
    countries: Sequence[str],
    scoring_time: dt.datetime,
    model_version: str,
    cache: Path,
) -> None:
    """Reserve a new charge, release, commit, then write ``cache``.

    The run id ``publish:<version>:<attempt>`` is new for every attempt (random ``attempt``), so the
    ledger's reserve, idempotent per (run id, purpose), always creates a charge: a missing cache is
    released again under a new charge, and two racing processes hold two charges, never one.  The
    charge is committed before the file appears, so a charge left ``reserved`` (a crash between
    reserve and commit) has no release on disk; on an exception before the commit it is released.
    """
    end = pd.Timestamp(scoring_time).tz_convert("UTC")
    policy = country_popularity_release(settings)
    window = policy.window(events, end)
    n_users = int(events["user_id"].nunique())
    budget_for_run(ledger, settings, n_users=n_users)  # refuses a configuration that disagrees
    known = {c.id for c in ledger.charges(settings.privacy_scope)}
    charge = ledger.reserve(
        scope=settings.privacy_scope,
        run_id=f"publish:{model_version}:{secrets.token_hex(8)}",
        mechanism=policy.mechanism(),
        data_window=(policy.start(end).to_pydatetime(), end.to_pydatetime()),
        n_users=n_users,
        code_version=code_version(),
        data_hash=hashlib.sha256(f"{len(window)}|{end.isoformat()}".encode()).hexdigest(),
        purpose=COUNTRY_POPULARITY_PURPOSE,
    )
    if charge.id in known or charge.status is not ChargeStatus.RESERVED:  # never reuse a charge
        raise RuntimeError(
            f"country popularity of model {model_version}: the ledger returned charge {charge.id} "
            f"({charge.status}), which another release holds; refusing a second release under it"
        )
    try:
        released = policy.release(events, end, item_ids=list(item_ids), countries=list(countries))
        ledger.commit(charge.id, model_version=model_version, artifact_uri=cache.as_uri())
        write_anchor_file(settings, f"commit-{charge.id}", ledger.anchor())
    except BaseException:
        if ledger.charge(charge.id).status is ChargeStatus.RESERVED:
            ledger.release(charge.id)  # nothing left this process
        raise
    atomic_write_parquet(cache, pa.Table.from_pandas(released, preserve_index=False))


# --- the whole publish ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishManifest:
    """What one publish did (XCom-sized): ids, counts, paths."""

    publish_id: str
    model_version: str
    scoring_time: str
    n_users: int
    n_cold_start: int
    n_items_scored: int
    n_new_items: int
    slot: str
    rows_written: int
    already_live: bool
    superseded: bool
    offline_uri: str
    seconds_scoring: float


def scoring_time_for_days(days: Sequence[str]) -> dt.datetime:
    """Scoring time of a run over ``days`` (ISO dates): the last day's snapshot time (its end)."""
    return snapshot_time(max(dt.date.fromisoformat(d) for d in days)).to_pydatetime()


def _user_snapshot(settings: Settings, scoring_time: dt.datetime) -> pd.DataFrame:

    day = (scoring_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date()
    path = user_features_dir(settings) / f"{day.isoformat()}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no user feature snapshot for {day} (scoring time {scoring_time}): {path}")
    return pq.read_table(path).to_pandas().sort_values("user_id", kind="stable").reset_index(drop=True)


def _current_items(settings: Settings) -> pd.DataFrame:

    return pq.read_table(item_features_path(settings)).to_pandas()


def run_publish(
    settings: Settings,
    scoring_time: dt.datetime,
    *,
    rules: PublishRules | None = None,
    recommender: tuple[Recommender, str] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    chunk_rows: int = 5000,
) -> PublishManifest:
    """Score every user of the snapshot at ``scoring_time`` with the champion and publish the top-K.

    ``recommender``: (Recommender, version); default :func:`tasks.registry.load_champion` (MLflow
    ``models:/<name>@champion``). Writes the audit parquet (temp file, rename) before the online
    blue/green write and switch. Same model and scoring time: same rows, same bytes.
    """
    import torch

    from tasks.model import text_neighbours

    rules = rules or PublishRules(k=settings.top_k)
    if scoring_time.tzinfo is None:
        raise ValueError("scoring_time must be timezone-aware")
    if recommender is None:
        from tasks.registry import load_champion

        recommender = load_champion(settings)
    model, version = recommender
    torch.manual_seed(settings.seed)
    users = _user_snapshot(settings, scoring_time)
    catalog = scoring_catalog(model, _current_items(settings))
    started = time.perf_counter()

    purchases, histories, kinds, recents = [], [], [], []
    index = {item: i for i, item in enumerate(catalog.item_ids)}
    for items, counts, recent in zip(
        users["purchased_items"], users["purchased_counts"], users["recent_items"], strict=True
    ):
        items_l, counts_l = (
            list(items if items is not None else []),
            list(counts if counts is not None else []),
        )
        pairs = [(index[i], c) for i, c in zip(items_l, counts_l, strict=True) if i in index]
        purchases.append(
            (np.asarray([p for p, _ in pairs], np.int64), np.asarray([c for _, c in pairs], float))
        )
        bought = purchases[-1][0]
        viewed = catalog.positions(list(recent if recent is not None else []))
        # the same items as Recommender.content_scores: the first history_length, then known ones
        recents.append(catalog.positions(list(recent if recent is not None else [])[: model.history_length]))
        histories.append(bought if len(bought) else viewed)
        kinds.append(BOUGHT if len(bought) else VIEWED)
    cold = np.asarray([len(h) == 0 for h in histories], dtype=bool)

    neighbours = text_neighbours(catalog.text) if model.weights.content else None

    warm_idx = np.flatnonzero(~cold)
    k = min(rules.k, len(catalog.item_ids))
    top = TopK(indices=np.full((len(users), k), -1, np.int64), scores=np.full((len(users), k), -np.inf))
    reasons: list[list[str]] = [[""] * k for _ in range(len(users))]
    warm_recents = [recents[i] for i in warm_idx]
    if len(warm_idx):
        warm = users.iloc[warm_idx]
        warm_top = score_top_k(
            model.user_vectors(warm),
            catalog.vectors,
            rules=rules,
            purchases=[purchases[i] for i in warm_idx],
            category=catalog.category,
            blend=ScoreBlend(model.weights, catalog.popularity, warm_recents, neighbours),
        )
        top.indices[warm_idx], top.scores[warm_idx] = warm_top.indices, warm_top.scores
        explained = explain(warm_top.indices, [histories[i] for i in warm_idx], catalog.text)
        for row, labels in zip(
            warm_idx, reason_labels(explained, [kinds[i] for i in warm_idx], catalog.item_ids), strict=True
        ):
            reasons[row] = labels
    popular = catalog.popularity if catalog.popularity is not None else np.zeros(len(catalog.item_ids))
    lists = {GLOBAL: popularity_top_k(popular, rules=rules, category=catalog.category)}
    countries: dict[str, str] = {}
    if settings.publish_countries:
        events = read_events(settings, until=(scoring_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date())
        events = events[events["event_timestamp"] < pd.Timestamp(scoring_time)]
        by_country = country_popularity(
            settings, events, catalog.item_ids, scoring_time=scoring_time, model_version=version
        )
        for country, counts in by_country.items():
            lists[country] = popularity_top_k(counts, rules=rules, category=catalog.category)
        countries = user_countries(events)
    for row in np.flatnonzero(cold):
        scope = countries.get(str(users["user_id"].iloc[row]), GLOBAL)
        scope = scope if scope in lists else GLOBAL
        top.indices[row], top.scores[row] = lists[scope].indices[0], lists[scope].scores[0]
        reasons[row] = [f"{POPULAR_PREFIX}{scope}"] * k
    seconds = time.perf_counter() - started

    scopes = sorted(lists)
    user_ids = [*users["user_id"].astype(str), *(f"{POPULAR_PREFIX}{c}" for c in scopes)]
    all_top = TopK(
        indices=np.concatenate([top.indices, *(lists[c].indices for c in scopes)]),
        scores=np.concatenate([top.scores, *(lists[c].scores for c in scopes)]),
    )
    rows = build_rows(
        user_ids,
        all_top,
        [*reasons, *([f"{POPULAR_PREFIX}{c}"] * k for c in scopes)],
        catalog.item_ids,
        model_version=version,
        scoring_time=scoring_time,
    )
    publish = publish_id_for(version, scoring_time)
    path = write_offline_copy(rows, offline_path(offline_root(settings), publish))
    apply_definitions(settings, extra=recommendation_objects(settings))
    online = publish_online(get_store(settings), rows, chunk_rows=chunk_rows, on_chunk=on_chunk)
    return PublishManifest(
        publish_id=publish,
        model_version=version,
        scoring_time=scoring_time.isoformat(),
        n_users=len(users),
        n_cold_start=int(cold.sum()),
        n_items_scored=len(catalog.item_ids),
        n_new_items=catalog.n_new,
        slot=online.slot,
        rows_written=online.rows_written,
        already_live=online.already_live,
        superseded=online.superseded,
        offline_uri=path.as_uri(),
        seconds_scoring=round(seconds, 3),
    )


def read_offline_copy(path: Path) -> pd.DataFrame:
    """The audit copy of one publish as written."""
    return pq.read_table(path).to_pandas()


def resolve_scoring_time(
    settings: Settings, conf: Mapping[str, Any] | None, asset_extras: Iterable[Mapping[str, Any]] = ()
) -> dt.datetime:
    """The run's scoring time, from the data, never the wall clock: the end of the last day of the run
    conf ``{"days": [...]}``, else of the triggering ``features`` events' ``partitions``/``days``, else
    the time of the latest user feature snapshot on disk (a ``model_champion`` trigger)."""
    days = run_days(conf, asset_extras)
    if days:
        return scoring_time_for_days([d.isoformat() for d in days])

    snapshots = sorted(p.stem for p in user_features_dir(settings).glob("*.parquet"))
    if not snapshots:
        raise FileNotFoundError(f"no user feature snapshots in {user_features_dir(settings)}")
    return scoring_time_for_days([snapshots[-1]])


def live_service_definition(settings: Settings) -> Any | None:
    """The registered ``recommendations_v1`` as it is now (for ``feature_repo/``), None before the first
    publish or when the registry cannot be read; lets ``feast apply`` from the folder keep the live slot
    (Feast deletes registered objects the folder does not define). Creates nothing: on a home without
    an embedded registry file there is nothing live to read."""
    url = settings.resolved_feast_registry_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    try:
        store = get_store(settings)
        slot, _ = live_slot(store)
        if slot is None:
            return None
        service = store.get_feature_service(SERVICE_NAME_DEFAULT, allow_cache=False)
        return recommendations_service(store.get_feature_view(slot), dict(service.tags))
    except Exception:  # no registry yet (fresh checkout): the CLI then shows the views only
        return None
