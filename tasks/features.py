"""Point-in-time user and item features computed from the lake, one daily snapshot per data day.

Every row carries an ``event_timestamp``; a snapshot for day ``D`` has ``event_timestamp = D+1 00:00
UTC`` and is computed only from events strictly before it, so Feast's point-in-time joins never see
the future.  Files (the offline store, read by Feast through DuckDB with absolute paths)::

    features/user_features/YYYY-MM-DD.parquet     one row per user active in the 30 days up to D
    features/item_popularity/YYYY-MM-DD.parquet   one row per item with events in the 30 days up to D
    features/item_features/catalog.parquet        the catalog + title embeddings (event_timestamp =
                                                  first_seen), rewritten from the current catalog

``user_features`` fields: views/clicks/carts/purchases over 7 and 30 days (event counts),
``spend_30d`` (sum of quantity * unit_price of purchases), ``avg_basket_value_30d`` (spend per
distinct purchase session), ``days_since_last_purchase`` (whole days, -1 when never), ``top_categories``
(at most 3 categories by event count over 30 days), ``recent_items`` (the most recent distinct items,
at most ``settings.history_length``, newest first, all history) and ``purchased_items`` /
``purchased_counts`` (the user's own all-time purchase counts, at most 100 items, most bought first).

``item_popularity`` is computed from many users' data and is NOT differentially private: the DP
training set never reads it (it is not part of the ``recommender_v1`` feature service).

Each day's file is written to a temporary name and renamed, so re-running a day rewrites the same rows.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
from collections.abc import Generator, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Settings
from tasks.contracts import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    PURCHASE,
    list_partitions,
    partition_dir,
)
from tasks.embeddings import TextEncoder, embed_items, load_pretrained_encoder
from tasks.io import atomic_write_parquet

log = logging.getLogger(__name__)

EVENT_NAMES: Final = {"view": "views", "click": "clicks", "add_to_cart": "carts", PURCHASE: "purchases"}
WINDOWS: Final = (7, 30)
TOP_CATEGORIES: Final = 3
MAX_PURCHASED_ITEMS: Final = 100
TS: Final = pa.timestamp("us", tz="UTC")
# the event columns the user state reads
STATE_INPUT_COLUMNS: Final = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "event_timestamp",
    "quantity",
    "unit_price",
    "session_id",
)

COUNT_COLUMNS: Final = tuple(f"{name}_{days}d" for days in WINDOWS for name in EVENT_NAMES.values())

USER_FEATURES_SCHEMA: Final = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False), pa.field("event_timestamp", TS, nullable=False)]
    + [pa.field(c, pa.int64(), nullable=False) for c in COUNT_COLUMNS]
    + [
        pa.field("spend_30d", pa.float64(), nullable=False),
        pa.field("avg_basket_value_30d", pa.float64(), nullable=False),
        pa.field("days_since_last_purchase", pa.float64(), nullable=False),
        pa.field("top_categories", pa.list_(pa.string())),
        pa.field("recent_items", pa.list_(pa.string())),
        pa.field("purchased_items", pa.list_(pa.string())),
        pa.field("purchased_counts", pa.list_(pa.int64())),
    ]
)

# the user state (:func:`user_state_at`): the user features without ``top_categories``
USER_STATE_SCHEMA: Final = pa.schema([f for f in USER_FEATURES_SCHEMA if f.name != "top_categories"])

POPULARITY_SCHEMA: Final = pa.schema(
    [pa.field("item_id", pa.string(), nullable=False), pa.field("event_timestamp", TS, nullable=False)]
    + [pa.field(c, pa.int64(), nullable=False) for c in COUNT_COLUMNS]
    + [pa.field("users_30d", pa.int64(), nullable=False)]
)

ITEM_FEATURES_SCHEMA: Final = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TS, nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("first_seen", TS, nullable=False),
        pa.field("embedding", pa.list_(pa.float32())),
    ]
)


@dataclass(frozen=True)
class FeatureManifest:
    """What :func:`compute_features` wrote (what XCom carries: paths and counts only)."""

    days: list[str]
    user_rows: int
    popularity_rows: int
    item_rows: int
    items_embedded: int
    embedding_model: str
    files: list[str] = field(default_factory=list)
    start: str = ""  # earliest snapshot event_timestamp (ISO, UTC)
    end: str = ""  # latest snapshot event_timestamp (ISO, UTC)


# --- paths ---------------------------------------------------------------------------------------
def user_features_dir(settings: Settings) -> Path:
    return settings.features_dir / "user_features"


def item_popularity_dir(settings: Settings) -> Path:
    return settings.features_dir / "item_popularity"


def item_features_path(settings: Settings) -> Path:
    return settings.features_dir / "item_features" / "catalog.parquet"


def items_catalog_path(settings: Settings) -> Path:
    return settings.items_dir / "items.parquet"


def snapshot_time(day: dt.date) -> pd.Timestamp:
    """``event_timestamp`` of day ``day``'s snapshot: the end of that day, ``D+1 00:00 UTC``."""
    return pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")


# --- reading the lake ----------------------------------------------------------------------------
def read_events(
    settings: Settings, until: dt.date | None = None, days: Sequence[dt.date] | None = None
) -> pd.DataFrame:
    """All clean events of the partitions up to ``until`` (inclusive), or of exactly ``days``."""
    frames = []
    for day in list_partitions(settings.events_dir) if days is None else sorted(days):
        if until is not None and day > until:
            continue
        folder = partition_dir(settings.events_dir, day)
        if days is not None and not folder.is_dir():
            raise FileNotFoundError(f"lake partition {folder} is gone")
        for file in sorted(folder.glob("*.parquet")):
            frames.append(pq.read_table(file, columns=list(EVENT_COLUMNS)).to_pandas())
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS}).astype(
            {"event_timestamp": "datetime64[us, UTC]"}
        )
    return pd.concat(frames, ignore_index=True)


def read_items(settings: Settings) -> pd.DataFrame:
    path = items_catalog_path(settings)
    if not path.exists():
        raise FileNotFoundError(f"item catalog not found: {path}")
    return pq.read_table(path, columns=list(ITEM_COLUMNS)).to_pandas()


# --- pure feature computation --------------------------------------------------------------------
def _sorted_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques): ``uniques`` in sorted order, ``uniques[codes[i]] == values[i]``."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, dtype=object)


def _i8(timestamps: pd.Series) -> np.ndarray:
    """Timestamps as int64 ticks of their column's unit (comparable within one column only)."""
    return np.asarray(timestamps.array.asi8, dtype=np.int64)


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """Position of each row inside its run of equal ``groups`` values (``groups`` sorted)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, n]))


@contextmanager
def _gc_paused() -> Generator[None, None, None]:
    """Pause Python's cyclic garbage collector while many small acyclic lists are built: it would
    rescan the growing output every few hundred allocations (7x slower, measured on 1M lists)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _group_lists(groups: np.ndarray, values: np.ndarray, n_groups: int) -> list[list[Any]]:
    """One list per group ``0..n_groups-1`` of ``values`` in row order (``groups`` sorted); [] when none."""
    ends = np.cumsum(np.bincount(groups, minlength=n_groups))
    with _gc_paused():
        flat = values.tolist()
        return [flat[a:b] for a, b in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)]


def _top_per_group(
    groups: np.ndarray, keys: Sequence[np.ndarray], values: np.ndarray, n_groups: int, limit: int
) -> list[list[Any]]:
    """Per group, the first ``limit`` ``values`` ordered by ``keys`` (most significant first, ascending;
    ties keep row order): a stable lexsort, no per-group Python call."""
    order = np.lexsort((*reversed(keys), groups)) if len(groups) else np.zeros(0, dtype=np.int64)
    groups, values = groups[order], values[order]
    keep = _rank_in_group(groups) < limit
    return _group_lists(groups[keep], values[keep], n_groups)


def _descending_ranks(values: pd.Series, tied: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` (high value -> low rank) on the rows ``tied`` marks; 0 elsewhere.

    Only rows that tie on the more significant keys need the tie-breaker, so only they are sorted."""
    ranks = np.zeros(len(values), dtype=np.int64)
    if tied.any():
        codes, _ = _sorted_codes(values[tied])
        ranks[tied] = -codes
    return ranks


def user_state_at(
    events: pd.DataFrame, at: pd.Timestamp, history_length: int, only: Iterable[str] | None = None
) -> pd.DataFrame:
    """THE user state: one row per user with an event before ``at`` (of the users ``only`` names, when given),
    computed from events before ``at`` only: ``event_timestamp`` (= ``at``), the count, spend and
    recency columns, ``recent_items``, ``purchased_items`` and ``purchased_counts`` (module docstring).

    A ``user_features`` snapshot is this function at the snapshot time for the users active in the
    30 days before it (:func:`user_features_at`, which adds ``top_categories``); training cuts,
    evaluation and the membership audit call it (or read it back through Feast) at their own times,
    so every stage sees one definition. Feast serves a user quiet for longer than 30 days their last
    snapshot row (TTL 0), where this function gives the state at ``at``.

    Vectorised on integer codes (users and items factorised in sorted order; counts by ``bincount``,
    orders by one stable ``lexsort``, lists sliced from one flat array): the cost grows linearly with
    the events, with no Python call per user except the final list slices.
    """
    mask = (events["event_timestamp"] < at).to_numpy()
    if only is not None:
        mask &= events["user_id"].isin(set(only)).to_numpy()
    past = events.loc[mask, list(STATE_INPUT_COLUMNS)]
    if past.empty:
        return _empty(USER_STATE_SCHEMA)
    user, users_sorted = _sorted_codes(past["user_id"])
    item, items_sorted = _sorted_codes(past["item_id"])
    n_users = len(users_sorted)
    ts = _i8(past["event_timestamp"])
    users = pd.Index(users_sorted, name="user_id")
    out = pd.DataFrame(index=users)
    out["event_timestamp"] = at

    etype = past["event_type"].map({e: k for k, e in enumerate(EVENT_NAMES)}).fillna(-1).to_numpy(np.int64)
    for days in WINDOWS:
        hit = (past["event_timestamp"] >= at - pd.Timedelta(days=days)).to_numpy() & (etype >= 0)
        counts = np.bincount(user[hit] * len(EVENT_NAMES) + etype[hit], minlength=n_users * len(EVENT_NAMES))
        counts = counts.reshape(n_users, len(EVENT_NAMES))
        for k, name in enumerate(EVENT_NAMES.values()):
            out[f"{name}_{days}d"] = counts[:, k].astype("int64")

    is_buy = (past["event_type"] == PURCHASE).to_numpy()
    in30 = (past["event_timestamp"] >= at - pd.Timedelta(days=30)).to_numpy()
    buys30 = past[is_buy & in30]
    codes30 = user[is_buy & in30]
    spend = (buys30["quantity"] * buys30["unit_price"].fillna(0.0)).groupby(codes30).sum()
    baskets = buys30["session_id"].groupby(codes30).nunique().clip(lower=1)
    spend_all = np.zeros(n_users, dtype=np.float64)
    spend_all[spend.index.to_numpy()] = spend.to_numpy(np.float64)
    basket_value = np.zeros(n_users, dtype=np.float64)
    basket_value[spend.index.to_numpy()] = (spend / baskets).to_numpy(np.float64)
    out["spend_30d"] = spend_all
    out["avg_basket_value_30d"] = basket_value

    buy_user, buy_item, buy_ts = user[is_buy], item[is_buy], ts[is_buy]
    last_buy = past["event_timestamp"][is_buy].groupby(buy_user).max()
    since_buy = np.full(n_users, -1.0)
    since_buy[last_buy.index.to_numpy()] = (at - last_buy).dt.days.to_numpy(np.float64)
    out["days_since_last_purchase"] = since_buy

    # recent_items: newest first (timestamp, then event id, descending; ties keep row order), distinct
    order = np.lexsort((-ts, user))
    run = np.r_[False, (user[order][1:] == user[order][:-1]) & (ts[order][1:] == ts[order][:-1])]
    tied = np.zeros(len(ts), dtype=bool)
    tied[order[run | np.r_[run[1:], False]]] = True
    order = np.lexsort((_descending_ranks(past["event_id"], tied), -ts, user))
    first = ~pd.Series(user[order] * len(items_sorted) + item[order]).duplicated().to_numpy()
    order = order[first]
    keep = _rank_in_group(user[order]) < history_length
    out["recent_items"] = _group_lists(user[order][keep], items_sorted[item[order][keep]], n_users)

    # purchased_items / _counts: all-time counts, most bought first, then latest, then item id
    pair = buy_user * len(items_sorted) + buy_item
    pair_order = np.argsort(pair, kind="stable")
    pairs, starts = np.unique(pair[pair_order], return_index=True)
    n_bought = np.diff(np.r_[starts, len(pair)])
    last = np.maximum.reduceat(buy_ts[pair_order], starts) if len(starts) else np.zeros(0, dtype=np.int64)
    pair_user, pair_item = pairs // len(items_sorted), pairs % len(items_sorted)
    keys = (-n_bought, -last, pair_item)
    out["purchased_items"] = _top_per_group(
        pair_user, keys, items_sorted[pair_item], n_users, MAX_PURCHASED_ITEMS
    )
    out["purchased_counts"] = _top_per_group(pair_user, keys, n_bought, n_users, MAX_PURCHASED_ITEMS)
    return out.reset_index()[USER_STATE_SCHEMA.names]


def user_features_at(
    events: pd.DataFrame, items: pd.DataFrame, at: pd.Timestamp, history_length: int
) -> pd.DataFrame:
    """The ``user_features`` snapshot at ``at``: :func:`user_state_at` of the users with an event in
    ``[at - 30 days, at)``, plus ``top_categories`` (by event count, then category name)."""
    window30 = events[
        (events["event_timestamp"] < at) & (events["event_timestamp"] >= at - pd.Timedelta(days=30))
    ]
    state = user_state_at(events, at, history_length, only=window30["user_id"].unique())
    if state.empty:
        return _empty(USER_FEATURES_SCHEMA)
    with_cat = window30[["user_id", "item_id"]].merge(
        items[["item_id", "category"]], on="item_id", how="left"
    )
    with_cat = with_cat.dropna(subset=["category"])
    user = pd.Index(state["user_id"]).get_indexer(with_cat["user_id"]).astype(np.int64)
    category, categories = _sorted_codes(with_cat["category"])
    pair = user * max(len(categories), 1) + category
    pairs, n = np.unique(pair, return_counts=True)
    pair_user, pair_cat = pairs // max(len(categories), 1), pairs % max(len(categories), 1)
    state["top_categories"] = _top_per_group(
        pair_user, (-n, pair_cat), categories[pair_cat], len(state), TOP_CATEGORIES
    )
    return state[USER_FEATURES_SCHEMA.names]


def item_popularity_at(events: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """Raw (non-private) event counts per item over 7 and 30 days before ``at``; never for DP training."""
    window30 = events[
        (events["event_timestamp"] < at) & (events["event_timestamp"] >= at - pd.Timedelta(days=30))
    ]
    items = pd.Index(sorted(window30["item_id"].unique()), name="item_id")
    if items.empty:
        return _empty(POPULARITY_SCHEMA)
    out = pd.DataFrame(index=items)
    out["event_timestamp"] = at
    for days in WINDOWS:
        window = window30[window30["event_timestamp"] >= at - pd.Timedelta(days=days)]
        counts = window.groupby(["item_id", "event_type"]).size().unstack(fill_value=0)
        for etype, name in EVENT_NAMES.items():
            col = counts[etype] if etype in counts.columns else pd.Series(dtype="int64")
            out[f"{name}_{days}d"] = col.reindex(items).fillna(0).astype("int64")
    out["users_30d"] = window30.groupby("item_id")["user_id"].nunique().reindex(items).astype("int64")
    return out.reset_index()[POPULARITY_SCHEMA.names]


def item_feature_rows(items: pd.DataFrame, embeddings: pd.DataFrame) -> pd.DataFrame:
    """Catalog attributes plus the title embedding; ``event_timestamp`` = ``first_seen``."""
    frame = items.merge(embeddings, on="item_id", how="left")
    frame["event_timestamp"] = frame["first_seen"]
    frame["embedding"] = [np.asarray(v, dtype=np.float32).tolist() for v in frame["embedding"]]
    return frame[ITEM_FEATURES_SCHEMA.names]


def _empty(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


# --- writing -------------------------------------------------------------------------------------
def write_table(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    """Write ``frame`` with ``schema`` to ``path`` atomically (:func:`tasks.io.atomic_write_parquet`)."""
    atomic_write_parquet(path, pa.Table.from_pandas(frame, schema=schema, preserve_index=False))


def compute_features(
    settings: Settings, days: Sequence[dt.date], encoder: TextEncoder | None = None
) -> FeatureManifest:
    """Write the user and popularity snapshots of ``days`` and refresh the item features.

    ``encoder`` embeds item titles (default: the packaged all-MiniLM-L6-v2); embeddings are cached
    under ``settings.cache_dir`` by (model id, title hash).
    """
    ordered = sorted(set(days))
    if not ordered:
        raise ValueError("compute_features: no days given")
    events = read_events(settings, until=ordered[-1])
    items = read_items(settings)
    files: list[str] = []
    user_rows = popularity_rows = 0
    for day in ordered:
        at = snapshot_time(day)
        users = user_features_at(events, items, at, settings.history_length)
        path = user_features_dir(settings) / f"{day.isoformat()}.parquet"
        write_table(users, USER_FEATURES_SCHEMA, path)
        files.append(str(path))
        popularity = item_popularity_at(events, at)
        path = item_popularity_dir(settings) / f"{day.isoformat()}.parquet"
        write_table(popularity, POPULARITY_SCHEMA, path)
        files.append(str(path))
        user_rows += len(users)
        popularity_rows += len(popularity)

    result = embed_items(
        items[["item_id", "title"]],
        settings.cache_dir,
        encoder or load_pretrained_encoder(package=settings.encoder_package),
    )
    item_rows = item_feature_rows(items, result.frame)
    path = item_features_path(settings)
    write_table(item_rows, ITEM_FEATURES_SCHEMA, path)
    files.append(str(path))
    log.info(
        "features for %d days: %d user rows, %d popularity rows, %d items (%d titles embedded by %s)",
        len(ordered),
        user_rows,
        popularity_rows,
        len(item_rows),
        result.n_embedded,
        result.model_id,
    )
    return FeatureManifest(
        days=[d.isoformat() for d in ordered],
        user_rows=user_rows,
        popularity_rows=popularity_rows,
        item_rows=len(item_rows),
        items_embedded=result.n_embedded,
        embedding_model=result.model_id,
        files=files,
        start=snapshot_time(ordered[0]).isoformat(),
        end=snapshot_time(ordered[-1]).isoformat(),
    )
