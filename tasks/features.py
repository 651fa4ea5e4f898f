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


def _descending_ranks(tied_values: pd.Series, tied: np.ndarray) -> np.ndarray:
    """Ranks (high value -> low rank) of ``tied_values`` on the rows ``tied`` marks; 0 elsewhere.

    Only rows that tie on the more significant keys need the tie-breaker, so only they are sorted."""
    ranks = np.zeros(len(tied), dtype=np.int64)
    codes, _ = _sorted_codes(tied_values)
    ranks[tied] = -codes
    return ranks


def _masked_codes(column: pd.Series, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques) of ``column``'s rows under ``mask``, uniques sorted: a large selection is
    factorised on the whole column and its codes compacted (no copy of the selected strings)."""
    if 2 * int(mask.sum()) < len(mask):
        return _sorted_codes(column[mask])
    codes, uniques = _sorted_codes(column)
    selected = codes[mask]
    present = np.bincount(selected, minlength=len(uniques)) > 0
    return (np.cumsum(present) - 1)[selected], uniques[present]


@dataclass(frozen=True)
class _State:
    frame: pd.DataFrame  # the user state, one row per user code
    user: np.ndarray  # user code of each selected event
    item: np.ndarray  # item code of each selected event
    items: np.ndarray  # item ids by code (sorted)


def _user_state(
    events: pd.DataFrame, mask: np.ndarray, at: pd.Timestamp, history_length: int
) -> _State | None:
    """:func:`user_state_at` of the events under ``mask`` (all before ``at``); None when there are none."""
    rows = np.flatnonzero(mask)
    if not len(rows):
        return None
    user, users_sorted = _masked_codes(events["user_id"], mask)
    item, items_sorted = _masked_codes(events["item_id"], mask)
    n_users = len(users_sorted)
    stamps = events["event_timestamp"]
    ts = _i8(stamps)[rows]
    out = pd.DataFrame(index=pd.Index(users_sorted, name="user_id"))
    out["event_timestamp"] = at

    type_codes, type_names = _masked_codes(events["event_type"], mask)
    # position in EVENT_NAMES of each event's type; -1 for other types (and, last, for a missing one)
    lookup = [list(EVENT_NAMES).index(t) if t in EVENT_NAMES else -1 for t in type_names]
    etype = np.asarray([*lookup, -1], dtype=np.int64)[type_codes]
    for days in WINDOWS:
        hit = (stamps >= at - pd.Timedelta(days=days)).to_numpy()[rows] & (etype >= 0)
        counts = np.bincount(user[hit] * len(EVENT_NAMES) + etype[hit], minlength=n_users * len(EVENT_NAMES))
        counts = counts.reshape(n_users, len(EVENT_NAMES))
        for k, name in enumerate(EVENT_NAMES.values()):
            out[f"{name}_{days}d"] = counts[:, k].astype("int64")

    is_buy = etype == list(EVENT_NAMES).index(PURCHASE)
    in30 = (stamps >= at - pd.Timedelta(days=30)).to_numpy()[rows]
    buys30 = rows[is_buy & in30]
    codes30 = user[is_buy & in30]
    price = events["unit_price"].to_numpy(dtype=np.float64)[buys30]
    paid = events["quantity"].to_numpy()[buys30] * np.where(np.isnan(price), 0.0, price)
    spend = pd.Series(paid).groupby(codes30).sum()
    baskets = pd.Series(events["session_id"].to_numpy()[buys30]).groupby(codes30).nunique().clip(lower=1)
    spend_all = np.zeros(n_users, dtype=np.float64)
    spend_all[spend.index.to_numpy()] = spend.to_numpy(np.float64)
    basket_value = np.zeros(n_users, dtype=np.float64)
    basket_value[spend.index.to_numpy()] = (spend / baskets).to_numpy(np.float64)
    out["spend_30d"] = spend_all
    out["avg_basket_value_30d"] = basket_value

    buy_user, buy_item, buy_ts = user[is_buy], item[is_buy], ts[is_buy]
    last_buy = stamps.iloc[rows[is_buy]].groupby(buy_user).max()
    since_buy = np.full(n_users, -1.0)
    since_buy[last_buy.index.to_numpy()] = (at - last_buy).dt.days.to_numpy(np.float64)
    out["days_since_last_purchase"] = since_buy

    # recent_items: newest first (timestamp, then event id, descending; ties keep row order), distinct
    order = np.lexsort((-ts, user))
    run = np.r_[False, (user[order][1:] == user[order][:-1]) & (ts[order][1:] == ts[order][:-1])]
    tied = np.zeros(len(ts), dtype=bool)
    tied[order[run | np.r_[run[1:], False]]] = True
    if tied.any():
        order = np.lexsort((_descending_ranks(events["event_id"].iloc[rows[tied]], tied), -ts, user))
    _, first = np.unique(user[order] * len(items_sorted) + item[order], return_index=True)
    order = order[np.sort(first)]
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
    return _State(out.reset_index()[USER_STATE_SCHEMA.names], user, item, items_sorted)


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
    orders by stable sorts, lists sliced from one flat array): no Python call per user except the
    final list slices, and no copy of the events' string columns.
    """
    mask = (events["event_timestamp"] < at).to_numpy()
    if only is not None:
        mask &= events["user_id"].isin(set(only)).to_numpy()
    state = _user_state(events, mask, at, history_length)
    return state.frame if state is not None else _empty(USER_STATE_SCHEMA)


def user_features_at(
    events: pd.DataFrame, items: pd.DataFrame, at: pd.Timestamp, history_length: int
) -> pd.DataFrame:
    """The ``user_features`` snapshot at ``at``: :func:`user_state_at` of the users with an event in
    ``[at - 30 days, at)``, plus ``top_categories`` (by event count, then category name).

    Computed as the state of every user with an event before ``at``, then the rows of the users
    active in the window (a user's state depends on their own events only)."""
    before = (events["event_timestamp"] < at).to_numpy()
    state = _user_state(events, before, at, history_length)
    if state is None:
        return _empty(USER_FEATURES_SCHEMA)
    in30 = (events["event_timestamp"] >= at - pd.Timedelta(days=30)).to_numpy()[before]
    active = np.bincount(state.user[in30], minlength=len(state.frame)) > 0
    if not active.any():
        return _empty(USER_FEATURES_SCHEMA)
    renumber = np.cumsum(active) - 1
    frame = state.frame[active].reset_index(drop=True)
    catalog = items[["item_id", "category"]]
    if catalog["item_id"].is_unique:  # the category of each event's item by code
        by_item = pd.Series(catalog["category"].to_numpy(), index=catalog["item_id"]).reindex(state.items)
        item_category, categories = _sorted_codes(by_item.reset_index(drop=True))
        event_category = item_category[state.item[in30]]
        known = event_category >= 0
        user, category = renumber[state.user[in30][known]], event_category[known]
    else:  # a catalog listing an item twice: join as a merge does (each listing counts)
        window = pd.DataFrame({"u": renumber[state.user[in30]], "item_id": state.items[state.item[in30]]})
        joined = window.merge(catalog, on="item_id", how="left").dropna(subset=["category"])
        user = joined["u"].to_numpy(np.int64)
        category, categories = _sorted_codes(joined["category"])
    width = max(len(categories), 1)
    pairs, n = np.unique(user * width + category, return_counts=True)
    pair_user, pair_cat = pairs // width, pairs % width
    frame["top_categories"] = _top_per_group(
        pair_user, (-n, pair_cat), categories[pair_cat], len(frame), TOP_CATEGORIES
    )
    return frame[USER_FEATURES_SCHEMA.names]


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
