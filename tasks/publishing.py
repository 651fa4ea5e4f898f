"""Batch scoring of every active user with the champion model, and publishing the top-K to Feast.

Scoring (:func:`score_top_k`): user vectors ``[U, d]`` times the catalog's item vectors ``[N, d]`` in
batches of users (one matrix product per batch, no Python loop over items), blended as the model was
tuned (:func:`tasks.model.blend_scores`: z-scored model score, the user's own repeat-purchase signal,
DP popularity), then the business rules, each in :class:`PublishRules`:

* items no longer in the catalog are never recommended (``allowed`` mask);
* items the user already bought are included by default (``include_purchased=True``: repeat purchases
  are real in retail, and the model's repeat signal ranks them); ``False`` removes them;
* at most ``max_per_category`` items of one category per list (diversity); ``None`` lifts the cap.

Top-K uses ``torch.topk`` over a per-row candidate pool; the category cap ranks candidates within their
category with one stable sort per batch (:func:`_rank_within_group`).

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

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import torch

GLOBAL: Final = "global"
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
def _rank_within_group(groups: torch.Tensor) -> torch.Tensor:
    """For rows of group labels ``[B, M]`` in score order, each entry's rank inside its group."""
    import torch

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


def top_k_with_rules(
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
    import torch

    masked = scores.clone().float()
    if allowed is not None:
        masked[:, ~allowed] = float("-inf")
    if excluded is not None:
        masked = masked.masked_fill(excluded, float("-inf"))
    n = masked.shape[1]
    k_out = min(k, n)
    if category is not None and max_per_category is not None:
        pool, pool_idx = torch.sort(masked, dim=1, descending=True, stable=True)
        rank = _rank_within_group(category[pool_idx])
        pool = pool.masked_fill(rank >= max_per_category, float("-inf"))
        values, pos = torch.topk(pool, k_out, dim=1, sorted=True)
        indices = torch.gather(pool_idx, 1, pos)
    else:
        values, indices = torch.topk(masked, k_out, dim=1, sorted=True)
    indices = indices.masked_fill(torch.isinf(values), -1)
    return values, indices


def dense_counts(histories: Sequence[tuple[np.ndarray, np.ndarray]], n_items: int) -> np.ndarray:
    """``[B, N]`` matrix of own purchase counts from per-user (catalog positions, counts) pairs."""
    out = np.zeros((len(histories), n_items), dtype=np.float32)
    rows = np.concatenate([np.full(len(idx), r) for r, (idx, _) in enumerate(histories)] or [np.zeros(0)])
    cols = np.concatenate([idx for idx, _ in histories] or [np.zeros(0)])
    vals = np.concatenate([c for _, c in histories] or [np.zeros(0)])
    if len(rows):
        np.add.at(out, (rows.astype(np.int64), cols.astype(np.int64)), vals.astype(np.float32))
    return out


def score_top_k(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    *,
    rules: PublishRules,
    purchases: Sequence[tuple[np.ndarray, np.ndarray]],
    allowed: np.ndarray | None = None,
    category: np.ndarray | None = None,
    blend: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> TopK:
    """Top-K catalog positions per user: batched ``user @ items.T``, blend, rules, ``torch.topk``.

    ``purchases[u]``: (catalog positions, counts) of user u's own purchases. ``blend(model_scores,
    own_counts) -> scores`` adds the model's repeat/popularity signals (identity when None).
    """
    import torch

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
            counts = dense_counts(purchases[start:stop], n_items)
            blended = blend(raw, counts) if blend is not None else raw
            excluded = torch.from_numpy(counts > 0) if not rules.include_purchased else None
            values, indices = top_k_with_rules(
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


def popularity_top_k(
    popularity: np.ndarray,
    *,
    rules: PublishRules,
    allowed: np.ndarray | None = None,
    category: np.ndarray | None = None,
) -> TopK:
    """The top-K of one DP popularity vector ``[N]`` under the same rules (cold-start lists)."""
    import torch

    values, indices = top_k_with_rules(
        torch.from_numpy(np.asarray(popularity, dtype=np.float32))[None, :],
        k=rules.k,
        allowed=torch.from_numpy(np.asarray(allowed, dtype=bool)) if allowed is not None else None,
        category=torch.from_numpy(np.asarray(category, dtype=np.int64)) if category is not None else None,
        max_per_category=rules.max_per_category,
    )
    return TopK(indices=indices.numpy(), scores=values.numpy())


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def reason_labels(explained: np.ndarray, kinds: Sequence[str], item_ids: Sequence[str]) -> list[list[str]]:
    """``bought:<id>`` / ``viewed:<id>`` per slot from :func:`explain` output; ``""`` when none.

    ``kinds[u]`` is :data:`BOUGHT` or :data:`VIEWED`: which history of user u was searched.
    """
    ids = np.asarray(item_ids, dtype=object)
    out = []
    for row, kind in enumerate(kinds):
        out.append([f"{kind}{ids[p]}" if p >= 0 else "" for p in explained[row]])
    return out
