"""The training and evaluation data, in numpy and pandas: the run's cuts, each user's state as of a
time, their labels after it, and the public item catalog.

Every state here is the Feast user-feature definition (:func:`tasks.features.user_state_at`), read
either through Feast's point-in-time join (:func:`feature_state`; a training run reads the rows its
pin took from Feast, :meth:`tasks.training_data.TrainingData.state_rows`) or computed from the lake at
the same time (:func:`user_state_at` in :mod:`tasks.features`): training, evaluation, the membership
audit and what Feast serves see one definition. The torch side (``UserExamples``) is in :mod:`tasks.training`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from tasks.catalog import ItemCatalog, build_item_catalog
from tasks.config import Settings
from tasks.contracts import EVENT_TYPES, PURCHASE
from tasks.feast_store import get_training_frame, item_vectors
from tasks.features import read_items

# What counts as an interaction for training labels and the DP popularity release: every event type.
# Purchases are rare (the default synthetic shop: 1,550 purchases but 64,000 views, clicks and carts in
# 40 days), so learning from every interaction gives DP-SGD ~5x more users and the popularity release
# ~40x more signal at the same noise. Purchase-only data (Online Retail II) is unaffected.
INTERACTIONS: Final[tuple[str, ...]] = EVENT_TYPES

StateSource = Callable[[pd.DataFrame], pd.DataFrame]
"""Point-in-time ``recommender_v1`` rows for an entity frame (``user_id``, ``event_timestamp``): one row
per entity row, nulls where the user has no snapshot yet (:func:`tasks.feast_store.get_training_frame`,
or the rows a training run pinned from it)."""


def purchases_between(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, list[str]]:
    """Each user's distinct purchased items in ``[start, end)``, most frequent first."""
    window = events[
        (events["event_type"] == PURCHASE)
        & (events["event_timestamp"] >= start)
        & (events["event_timestamp"] < end)
    ]
    counts = window.groupby(["user_id", "item_id"]).size().reset_index(name="n")
    counts = counts.sort_values(["user_id", "n", "item_id"], ascending=[True, False, True], kind="stable")
    return {str(u): [str(i) for i in g["item_id"]] for u, g in counts.groupby("user_id", sort=True)}


def per_user_cuts(
    events: pd.DataFrame, end: pd.Timestamp, horizon_days: int, event_types: Sequence[str] = INTERACTIONS
) -> pd.DataFrame:
    """Each user's own training cut before ``end``, for the task "what will this user buy in the next
    ``horizon_days``": the start of the window of ``horizon_days`` days that ends with the user's last
    day with an event of ``event_types`` before ``end``. A user whose every such day falls inside that
    window (no history before it) is cut at the start of the middle one of their distinct days instead.
    Users with fewer than two such days have no example.

    Their state is taken at the cut and their interactions in ``[cut, cut + horizon_days)`` are the
    labels (:func:`purchases_after_cuts`), so every user is one sample and the labels of one user never
    leak into the state of the same sample."""
    if horizon_days < 1:
        raise ValueError(f"the label window must be at least one day, got {horizon_days}")
    buys = events[events["event_type"].isin(list(event_types)) & (events["event_timestamp"] < end)]
    days = buys.assign(day=buys["event_timestamp"].dt.floor("D")).drop_duplicates(["user_id", "day"])
    days = days.sort_values(["user_id", "day"], kind="stable")
    grouped = days.groupby("user_id")["day"]
    n_days = grouped.transform("size")
    window_start = grouped.transform("max") + pd.Timedelta(days=1 - horizon_days)
    history_before = grouped.transform("min") < window_start
    middle = days[(n_days >= 2) & (days.groupby("user_id").cumcount() == n_days // 2)]
    cut = window_start.where(history_before, days["day"]).loc[middle.index]
    return pd.DataFrame({"user_id": middle["user_id"].astype(str).to_numpy(), "cut": cut.to_numpy()})


def purchases_after_cuts(
    events: pd.DataFrame,
    cuts: pd.DataFrame,
    end: pd.Timestamp,
    horizon_days: int,
    event_types: Sequence[str] = INTERACTIONS,
) -> dict[str, list[str]]:
    """Each user's distinct items with an event of ``event_types`` in ``[their cut, cut +
    horizon_days)`` and before ``end`` (the training labels), most frequent first."""
    buys = events[events["event_type"].isin(list(event_types)) & (events["event_timestamp"] < end)]
    merged = buys.assign(user_id=buys["user_id"].astype(str)).merge(cuts, on="user_id")
    in_window = (merged["event_timestamp"] >= merged["cut"]) & (
        merged["event_timestamp"] < merged["cut"] + pd.Timedelta(days=horizon_days)
    )
    merged = merged[in_window].assign(event_type=PURCHASE)
    return purchases_between(merged, merged["event_timestamp"].min(), end) if len(merged) else {}


@dataclass(frozen=True)
class Cuts:
    """The run's time points (all derived from the data's end ``as_of``, never from the clock)."""

    as_of: pd.Timestamp
    test: pd.Timestamp  # evaluation truth: [test, as_of)
    validation: pd.Timestamp  # blend tuning truth: [validation, test)

    @classmethod
    def from_end(cls, as_of: pd.Timestamp, eval_days: int) -> Cuts:
        window = pd.Timedelta(days=eval_days)
        test = as_of - window
        validation = test - window
        return cls(as_of=as_of, test=test, validation=validation)


def users_before(events: pd.DataFrame, cut: pd.Timestamp) -> list[str]:
    """The users with an event before ``cut``, sorted: those an evaluation at ``cut`` can score."""
    return sorted(events.loc[events["event_timestamp"] < cut, "user_id"].astype(str).unique())


def feature_state(
    settings: Settings,
    user_ids: Sequence[str],
    at: pd.Timestamp | Sequence[pd.Timestamp],
    *,
    source: StateSource | None = None,
) -> pd.DataFrame:
    """``recommender_v1`` features of users as of ``at`` (one time, or one per user), point-in-time,
    from ``source`` (default: Feast); users without a snapshot with history before their time are
    dropped."""
    entity = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": at})
    if entity.empty:
        return entity
    frame = source(entity) if source is not None else get_training_frame(settings, entity)
    frame = frame[frame["recent_items"].map(lambda v: v is not None and len(v) > 0)].copy()
    for col in ("recent_items", "purchased_items", "purchased_counts"):
        frame[col] = frame[col].map(lambda v: list(v) if v is not None else [])
    return frame.sort_values("user_id", kind="stable").reset_index(drop=True)


def load_catalog(settings: Settings) -> ItemCatalog:
    """Public item-tower inputs from the item features (catalog + frozen title embeddings)."""
    ids, matrix = item_vectors(settings)
    embeddings = pd.DataFrame({"item_id": ids, "embedding": list(matrix)})
    return build_item_catalog(read_items(settings), embeddings, encoder_id=f"dim{matrix.shape[1]}")


# --- the held-out split, decided before training ---------------------------------------------------
def holdout_mask(user_ids: Iterable[str], share: float, *, seed: int) -> np.ndarray:
    """True for the users held out of training: SHA-256 of ``seed`` and the user id, read as a
    number in [0, 1), below ``share``. Independent of the users' data and of who else is in the set."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share must be in [0, 1), got {share}")
    scale = float(2**64)

    def point(user_id: str) -> float:
        digest = hashlib.sha256(f"shoprec-membership:{seed}:{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / scale

    return np.fromiter((point(str(u)) < share for u in user_ids), dtype=bool)


def drop_held_out(settings: Settings, user_cuts: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``user_cuts`` (a ``user_id`` column) that may train: held-out users removed.

    The trainer's one-line hook: ``user_cuts = drop_held_out(settings, per_user_cuts(...))``.
    """
    keep = ~holdout_mask(
        user_cuts["user_id"].astype(str), settings.membership_holdout_share, seed=settings.seed
    )
    return user_cuts[keep].reset_index(drop=True)


@dataclass(frozen=True)
class TrainingCandidates:
    """The users of one training run as of its validation cut: each user's own ``cut``
    (:func:`per_user_cuts`), their Feast ``state`` at the cut and their ``labels`` after it."""

    user_cuts: pd.DataFrame  # user_id, cut
    state: pd.DataFrame
    labels: dict[str, list[str]]


def training_user_cuts(
    settings: Settings, events: pd.DataFrame, validation: pd.Timestamp, *, with_held_out: bool = False
) -> pd.DataFrame:
    """Each candidate user's own cut before ``validation``: without the held-out users
    (:func:`drop_held_out`) what DP-SGD trains on, with them what the membership audit scores."""
    user_cuts = per_user_cuts(events, validation, settings.eval_days)
    return user_cuts if with_held_out else drop_held_out(settings, user_cuts)


def training_candidates(
    settings: Settings,
    events: pd.DataFrame,
    validation: pd.Timestamp,
    *,
    with_held_out: bool = False,
    source: StateSource | None = None,
) -> TrainingCandidates:
    """The one definition of a run's training users, shared by ``run_training`` (``with_held_out``
    False) and the membership audit (True: the held-out users are its non-members); their state from
    ``source`` (:func:`feature_state`)."""
    user_cuts = training_user_cuts(settings, events, validation, with_held_out=with_held_out)
    state = feature_state(settings, user_cuts["user_id"].tolist(), list(user_cuts["cut"]), source=source)
    labels = purchases_after_cuts(events, user_cuts, validation, settings.eval_days)
    return TrainingCandidates(user_cuts, state, labels)
