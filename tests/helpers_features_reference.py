"""The user state as computed before it was vectorised (issue 19): the reference its replacement,
:func:`tasks.features.user_state_at`, must match exactly (tests/unit/test_features_vectorised.py).

Copied unchanged from tasks/features.py at commit 06107cc (a pandas groupby-apply that builds one
Python list per user with a lambda); only the names carry a ``reference_`` prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from tasks.contracts import PURCHASE
from tasks.features import (
    EVENT_NAMES,
    MAX_PURCHASED_ITEMS,
    TOP_CATEGORIES,
    USER_FEATURES_SCHEMA,
    USER_STATE_SCHEMA,
    WINDOWS,
)


def _empty(schema: Any) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def _lists(series: pd.Series, index: pd.Index) -> list[list[Any]]:
    return [list(v) if isinstance(v, list) else [] for v in series.reindex(index)]


def reference_user_state_at(
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
    """
    past = events[events["event_timestamp"] < at]
    if only is not None:
        past = past[past["user_id"].isin(set(only))]
    window30 = past[past["event_timestamp"] >= at - pd.Timedelta(days=30)]
    users = pd.Index(sorted(past["user_id"].unique()), name="user_id")
    out = pd.DataFrame(index=users)
    out["event_timestamp"] = at
    if users.empty:
        return _empty(USER_STATE_SCHEMA)
    for days in WINDOWS:
        window = past[past["event_timestamp"] >= at - pd.Timedelta(days=days)]
        counts = window.groupby(["user_id", "event_type"]).size().unstack(fill_value=0)
        for etype, name in EVENT_NAMES.items():
            col = counts[etype] if etype in counts.columns else pd.Series(dtype="int64")
            out[f"{name}_{days}d"] = col.reindex(users).fillna(0).astype("int64")
    buys30 = window30[window30["event_type"] == PURCHASE]
    spend = (buys30["quantity"] * buys30["unit_price"].fillna(0.0)).groupby(buys30["user_id"]).sum()
    baskets = buys30.groupby("user_id")["session_id"].nunique().clip(lower=1)
    out["spend_30d"] = spend.reindex(users).fillna(0.0).astype("float64")
    out["avg_basket_value_30d"] = (spend / baskets).reindex(users).fillna(0.0).astype("float64")

    buys = past[past["event_type"] == PURCHASE]
    last_buy = buys.groupby("user_id")["event_timestamp"].max()
    since = (at - last_buy).dt.days.astype("float64")
    out["days_since_last_purchase"] = since.reindex(users).fillna(-1.0)

    ordered = past.sort_values(["event_timestamp", "event_id"], ascending=False, kind="stable")
    recent = ordered.drop_duplicates(["user_id", "item_id"]).groupby("user_id")["item_id"]
    out["recent_items"] = _lists(recent.agg(lambda s: list(s[:history_length])), users)

    bought = buys.groupby(["user_id", "item_id"]).agg(n=("event_id", "size"), last=("event_timestamp", "max"))
    bought = bought.reset_index().sort_values(
        ["user_id", "n", "last", "item_id"], ascending=[True, False, False, True]
    )
    top_bought = bought.groupby("user_id").head(MAX_PURCHASED_ITEMS).groupby("user_id")
    out["purchased_items"] = _lists(top_bought["item_id"].agg(list), users)
    out["purchased_counts"] = [[int(c) for c in v] for v in _lists(top_bought["n"].agg(list), users)]
    return out.reset_index()[USER_STATE_SCHEMA.names]


def reference_user_features_at(
    events: pd.DataFrame, items: pd.DataFrame, at: pd.Timestamp, history_length: int
) -> pd.DataFrame:
    """The ``user_features`` snapshot at ``at``: :func:`user_state_at` of the users with an event in
    ``[at - 30 days, at)``, plus ``top_categories``."""
    window30 = events[
        (events["event_timestamp"] < at) & (events["event_timestamp"] >= at - pd.Timedelta(days=30))
    ]
    state = reference_user_state_at(events, at, history_length, only=window30["user_id"].unique())
    if state.empty:
        return _empty(USER_FEATURES_SCHEMA)
    with_cat = window30.merge(items[["item_id", "category"]], on="item_id", how="left").dropna(
        subset=["category"]
    )
    cat_counts = with_cat.groupby(["user_id", "category"]).size().reset_index(name="n")
    cat_counts = cat_counts.sort_values(["user_id", "n", "category"], ascending=[True, False, True])
    top = cat_counts.groupby("user_id")["category"].agg(lambda s: list(s[:TOP_CATEGORIES]))
    state["top_categories"] = _lists(top, pd.Index(state["user_id"], name="user_id"))
    return state[USER_FEATURES_SCHEMA.names]
