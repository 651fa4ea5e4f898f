"""Each decision's customer context from Feast, point in time: the user features as of the decision.

:func:`decision_context` asks Feast's ``get_historical_features`` (through
:func:`tasks.feast_store.get_training_frame`, service ``recommender_v1``) for an entity frame of
(``user_id``, ``event_timestamp`` = the decision's timestamp): each decision gets the customer's latest
daily snapshot stamped at or before the decision (a snapshot stamped ``D+1 00:00`` holds only events
before that instant), never a later one, so a reward model trained on a log sees what the campaign
could have known when it decided.  :func:`context_matrix` turns those features into the reward model's
numeric context (:data:`CONTEXT_NAMES`); a customer without any snapshot yet gets zeros with
``has_history`` 0.

Not wired into ``train_offer_policy`` yet: the DAG still reads the simulator's per-customer features
(``customers.parquet``), see docs/campaigns.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pandas as pd

from tasks.config import Settings
from tasks.feast_store import get_training_frame
from tasks.sources.synthetic import CATEGORY_NAMES

ROW: Final = "_decision_row"
NUMERIC: Final = (
    "log_views_30d",
    "log_purchases_30d",
    "log_spend_30d",
    "log_basket_30d",
    "recency_months",
    "has_history",
)
CONTEXT_NAMES: Final[tuple[str, ...]] = (
    *NUMERIC,
    *(f"top_{c.replace(' ', '_')}" for c in CATEGORY_NAMES),
)
# a customer who never bought: recency as if the last purchase were a year ago
NEVER_BOUGHT_MONTHS: Final = 12.0


def decision_features(settings: Settings, user_ids: Sequence[str], timestamps: pd.Series) -> pd.DataFrame:
    """``recommender_v1`` features of each decision's customer as of its timestamp, in input order."""
    if len(user_ids) != len(timestamps):
        raise ValueError(f"{len(user_ids)} user ids but {len(timestamps)} timestamps")
    stamps = pd.to_datetime(pd.Series(timestamps).reset_index(drop=True), utc=True)
    if stamps.isna().any():
        raise ValueError("every decision needs a timestamp for its point-in-time features")
    entity = pd.DataFrame({"user_id": [str(u) for u in user_ids], "event_timestamp": stamps})
    entity[ROW] = np.arange(len(entity))
    frame = get_training_frame(settings, entity)
    if len(frame) != len(entity):
        raise RuntimeError(f"Feast returned {len(frame)} rows for {len(entity)} decisions")
    return frame.sort_values(ROW, kind="mergesort").reset_index(drop=True)


def context_matrix(features: pd.DataFrame) -> np.ndarray:
    """``(len(features), len(CONTEXT_NAMES))`` the reward model's context from user features."""

    def column(name: str) -> np.ndarray:
        return pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=np.float64)

    has = features["views_30d"].notna().to_numpy() | features["days_since_last_purchase"].notna().to_numpy()
    days = column("days_since_last_purchase")
    recency = np.where(np.isnan(days) | (days < 0), NEVER_BOUGHT_MONTHS, days / 30.0)
    numeric = [
        np.log1p(np.nan_to_num(np.maximum(column("views_30d"), 0.0))),
        np.log1p(np.nan_to_num(np.maximum(column("purchases_30d"), 0.0))),
        np.log1p(np.nan_to_num(np.maximum(column("spend_30d"), 0.0))),
        np.log1p(np.nan_to_num(np.maximum(column("avg_basket_value_30d"), 0.0))),
        np.where(has, np.minimum(recency, NEVER_BOUGHT_MONTHS), NEVER_BOUGHT_MONTHS),
        has.astype(np.float64),
    ]
    tops = features["top_categories"].map(lambda v: set(v) if isinstance(v, list | np.ndarray) else set())
    indicators = [tops.map(lambda s, c=c: float(c in s)).to_numpy(dtype=np.float64) for c in CATEGORY_NAMES]
    out = np.column_stack([*numeric, *indicators])
    out[~has] = np.where(np.arange(out.shape[1]) == NUMERIC.index("recency_months"), NEVER_BOUGHT_MONTHS, 0.0)
    return out


def decision_context(settings: Settings, user_ids: Sequence[str], timestamps: pd.Series) -> np.ndarray:
    """:func:`context_matrix` of :func:`decision_features`: one context row per decision."""
    return context_matrix(decision_features(settings, user_ids, timestamps))
